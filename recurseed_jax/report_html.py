"""The report's HTML: a self-contained page of sections (tables, figures, text), no script.

Images are inlined as base64 PNG data URIs and the style is inline, so the page opened from disk
shows everything offline; collapsible parts are plain <details>. Score tables are rendered from
scoring.report's markdown (the tables of evaluation.md), so both show the same figures.
"""

import base64
import dataclasses
import html
import io
import math
import os
import re

from PIL import Image

from recurseed_jax import io_utils
from recurseed_jax import panels
from recurseed_jax import scoring


@dataclasses.dataclass(frozen=True)
class Section:
  """A titled part of the page; `body` is HTML (escape text with html.escape)."""
  title: str
  body: str
  anchor: str = ''


def data_uri(png):
  return 'data:image/png;base64,' + base64.b64encode(png).decode('ascii')


def img_html(png, alt, css_class=''):
  """An <img> of PNG bytes, inlined, at its own pixel size."""
  with Image.open(io.BytesIO(png)) as img:
    w, h = img.size
  cls = f' class="{css_class}"' if css_class else ''
  return (f'<img{cls} src="{data_uri(png)}" width="{w}" height="{h}" '
          f'alt="{html.escape(alt)}">')


def _cells(line):
  return [c.strip() for c in line.strip().strip('|').split('|')]


def markdown_table_html(lines):
  """A markdown table (header, alignment row, rows) as an HTML table; **x** becomes bold."""
  head, align, *body = [_cells(line) for line in lines]
  right = [a.endswith(':') for a in align]

  def cell(tag, text, r):
    text = re.sub(r'\*\*(.+?)\*\*', r'<b>\1</b>', html.escape(text))
    return f'<{tag}{" class=num" if r else ""}>{text}</{tag}>'

  rows = ['<tr>' + ''.join(cell('th', t, r) for t, r in zip(head, right)) + '</tr>']
  rows += ['<tr>' + ''.join(cell('td', t, r) for t, r in zip(row, right)) + '</tr>'
           for row in body]
  return '<table>' + ''.join(rows) + '</table>'


def _markdown_blocks(md):
  """[(heading, table lines, text lines)] of a markdown document of '#'-headings and tables."""
  blocks = [[None, [], []]]
  for line in md.splitlines():
    if line.startswith('## '):
      blocks.append([line[3:].strip(), [], []])
    elif line.startswith('# '):
      continue
    elif line.startswith('|'):
      blocks[-1][1].append(line)
    elif line.strip():
      blocks[-1][2].append(line.strip())
  return blocks


def scores_html(results, class_names, titles=None, notes=()):
  """The summary table of every product, then each product's per-class table, collapsed.

  `results` {product: confusion.scores(...) + num_images}; `class_names` the C foreground names.
  The tables are scoring.report's (evaluation.md), so the figures are the same to the digit.
  """
  if not results:
    return '<p>No product was scored (no ground truth, or nothing to score yet).</p>'
  md = scoring.report(results, ['background'] + list(class_names), titles)
  (_, summary, text), *per_class = _markdown_blocks(md)
  out = ['<div class=scroll>' + markdown_table_html(summary) + '</div>']
  out += [f'<p class=note>{html.escape(t)}</p>' for t in list(text) + list(notes)]
  for heading, table, _ in per_class:
    out.append(f'<details><summary>per class: {html.escape(heading)}</summary>'
               f'<div class=scroll>{markdown_table_html(table)}</div></details>')
  return '\n'.join(out)


def curves_html(figures):
  """<figure>s of [(caption, PNG bytes)]."""
  if not figures:
    return '<p>No training log (metrics.jsonl) in this workdir.</p>'
  return '\n'.join(f'<figure class=curve>{img_html(png, caption)}<figcaption>'
                   f'{html.escape(caption)}</figcaption></figure>' for caption, png in figures)


def gallery_html(samples, intro=''):
  """The figures of [(image id, group, iou or None, PNG bytes or uint8 RGB)], under headings.

  Each figure carries data-id, data-group and data-iou (the ranking's per-image IoU) for tools.
  """
  out = [f'<p>{html.escape(intro)}</p>'] if intro else []
  group = None
  for image_id, g, iou, picture in samples:
    png = picture if isinstance(picture, bytes) else panels.encode_png(picture)
    if g != group:
      group = g
      out.append(f'<h3>{html.escape(g)}</h3>')
    value = '' if iou is None or math.isnan(iou) else f'{iou:.6f}'
    out.append(f'<figure class=sample data-id="{html.escape(str(image_id))}" '
               f'data-group="{html.escape(g)}" data-iou="{value}">'
               f'<div class=scroll>{img_html(png, str(image_id))}</div>'
               '</figure>')
  return '\n'.join(out)


def legend_html(names):
  """Swatches of every label (background first) in the VOC colours."""
  palette = io_utils.voc_palette()
  items = [(n, palette[i]) for i, n in enumerate(names)] + [('ignore', palette[255])]
  return '<p class=legend>' + ' '.join(
      f'<span><i style="background:rgb({c[0]},{c[1]},{c[2]})"></i>{html.escape(n)}</span>'
      for n, c in items) + '</p>'


def config_html(config_text=None, commands=()):
  """The commands (a <pre>) and the config (collapsed <pre>)."""
  out = []
  if commands:
    out.append('<h3>commands</h3><pre>' + html.escape('\n'.join(commands)) + '</pre>')
  if config_text:
    out.append('<details><summary>config.json</summary><pre>' + html.escape(config_text) +
               '</pre></details>')
  return '\n'.join(out) or '<p>No config.</p>'


_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;
  color:#1e1e1e;margin:0 auto;padding:16px 24px;max-width:1400px}
h1{font-size:22px;margin:4px 0}h2{font-size:18px;border-bottom:1px solid #ccc;margin-top:28px}
h3{font-size:15px;margin:14px 0 6px}.sub,.note{color:#555}
table{border-collapse:collapse;margin:6px 0}th,td{border:1px solid #ccc;padding:3px 8px}
th{background:#f2f2f2}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
details{margin:4px 0}summary{cursor:pointer}pre{background:#f6f6f6;padding:8px;overflow:auto;
  font:12px/1.4 ui-monospace,'DejaVu Sans Mono',monospace}
figure{margin:8px 0}figure.curve{display:inline-block;margin-right:12px}
figcaption{color:#555;font-size:12px}.scroll{overflow-x:auto}img{display:block}
nav a{margin-right:12px}.legend span{display:inline-block;margin-right:12px}
.legend i{display:inline-block;width:12px;height:12px;border:1px solid #888;margin-right:4px;
  vertical-align:-1px}
"""


def render_page(sections, title, subtitle=''):
  """The whole page as a string: title, a link per section, the sections."""
  anchors = [s.anchor or re.sub(r'[^a-z0-9]+', '-', s.title.lower()).strip('-')
             for s in sections]
  nav = ' '.join(f'<a href="#{a}">{html.escape(s.title)}</a>' for a, s in zip(anchors, sections))
  body = '\n'.join(f'<section id="{a}"><h2>{html.escape(s.title)}</h2>\n{s.body}\n</section>'
                   for a, s in zip(anchors, sections))
  sub = f'<p class=sub>{html.escape(subtitle)}</p>' if subtitle else ''
  return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
          f'<meta name="viewport" content="width=device-width, initial-scale=1">'
          f'<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n<body>'
          f'<h1>{html.escape(title)}</h1>{sub}<nav>{nav}</nav>\n{body}\n</body></html>\n')


def build_report(sections, out_path, title='RecurSeed report', subtitle=''):
  """Writes render_page(...) to `out_path` atomically (temp name + rename); returns the path."""
  folder = os.path.dirname(os.path.abspath(out_path))
  os.makedirs(folder, exist_ok=True)
  io_utils.atomic_write_bytes(out_path, render_page(sections, title, subtitle).encode('utf-8'))
  return out_path
