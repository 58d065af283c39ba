"""Labelled figures of one image: tiles side by side, a title over each, a legend of the classes.

The report's gallery and the export stage's overlays/ show the same kind of figure, so it is
drawn here once, into uint8 RGB pixels (PIL, its bundled font: no system fonts, nothing for a
viewer to load). Small images (the 64 px demo) are enlarged by a whole factor, large ones (VOC)
shrunk to a cap, so every tile is big enough to read and no figure is huge. Label maps are drawn
in the VOC colours unblended, so a tile's colours are exactly the legend's.
"""

import dataclasses
import functools
import io
import math

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from recurseed_jax import confusion
from recurseed_jax import io_utils

CAP = 320    # px: the long side of a tile at most
FLOOR = 160  # px: smaller images are enlarged by a whole factor to at least this
_PAD, _GAP, _SWATCH = 8, 6, 14
_INK, _PAPER, _FAINT = (30, 30, 30), (255, 255, 255), (110, 110, 110)


@dataclasses.dataclass(frozen=True)
class Tile:
  """One picture of a figure. `crisp`: a label map, resized by nearest neighbour only."""
  title: str
  rgb: np.ndarray
  crisp: bool = False


def jet(x):
  """A jet-like ramp: [..] floats in [0, 1] -> uint8 [.., 3] (blue, cyan, yellow, red)."""
  x = np.clip(np.asarray(x, np.float32), 0.0, 1.0)[..., None]
  centres = np.array([0.75, 0.5, 0.25], np.float32)  # where r, g, b peak
  rgb = np.clip(1.5 - np.abs(4.0 * (x - centres)), 0.0, 1.0)
  return (255.0 * rgb + 0.5).astype(np.uint8)


def image_tile(title, image):
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
    raise ValueError(f'{title}: image must be uint8 [H, W, 3], got {image.dtype} {image.shape}')
  return Tile(title, image)


def heat_tile(title, image, heat, alpha=0.5):
  """`heat` float [H, W] in [0, 1] in jet colours, blended over the image."""
  image = np.asarray(image)
  if np.shape(heat) != image.shape[:2]:
    raise ValueError(f'{title}: heat shape {np.shape(heat)} != image shape {image.shape[:2]}')
  out = (1.0 - alpha) * image.astype(np.float32) + alpha * jet(heat).astype(np.float32)
  return Tile(title, np.clip(out + 0.5, 0, 255).astype(np.uint8))


def label_tile(title, labels):
  """A uint8 [H, W] label map (0 background, 255 ignore) in the VOC colours."""
  labels = np.asarray(labels)
  if labels.ndim != 2:
    raise ValueError(f'{title}: a label map must be [H, W], got shape {labels.shape}')
  return Tile(title, io_utils.voc_palette()[labels.astype(np.uint8)], crisp=True)


def legend_entries(names, *label_maps):
  """[(name, rgb)] of the labels present in any of the maps; `names[label]` names a label
  (background first); 255 is 'ignore'."""
  present = set()
  for labels in label_maps:
    if labels is not None:
      present.update(np.unique(np.asarray(labels)).tolist())
  palette = io_utils.voc_palette()
  out = []
  for v in sorted(present):
    name = 'ignore' if v == confusion.IGNORE else (names[v] if v < len(names) else f'label {v}')
    out.append((name, tuple(int(c) for c in palette[v])))
  return out


def display_size(hw, cap=CAP, floor=FLOOR):
  """(H, W) a tile is shown at: shrunk to `cap` px on its long side, or enlarged by the whole
  factor that brings it to `floor` px at least (without passing `cap`)."""
  h, w = int(hw[0]), int(hw[1])
  long = max(h, w, 1)
  if long > cap:
    s = cap / long
  elif long < floor:
    s = max(1, min(math.ceil(floor / long), cap // long))
  else:
    s = 1
  return max(1, round(h * s)), max(1, round(w * s))


@functools.lru_cache(maxsize=None)
def font(size):
  """PIL's bundled TrueType font at `size` px (its bitmap font where FreeType is missing)."""
  try:
    return ImageFont.load_default(size=size)
  except (TypeError, AttributeError, OSError):  # Pillow < 10.1, or no FreeType
    return ImageFont.load_default()


def _fit(draw, text, fnt, width):
  """`text` cut with an ellipsis to at most `width` px."""
  if draw.textlength(text, font=fnt) <= width:
    return text
  while text and draw.textlength(text + '…', font=fnt) > width:
    text = text[:-1]
  return text + '…'


def _wrap(draw, title, fnt, width):
  """[(text, first)] of a title wrapped at spaces to `width` px, each of its '\n' lines after
  the first marked first=False (drawn fainter); a word too long is cut with an ellipsis."""
  out = []
  for k, text in enumerate(title.split('\n')):
    line = ''
    for word in text.split(' '):
      joined = f'{line} {word}' if line else word
      if line and draw.textlength(joined, font=fnt) > width:
        out.append((_fit(draw, line, fnt, width), k == 0))
        joined = word
      line = joined
    out.append((_fit(draw, line, fnt, width), k == 0))
  return out


def _resize(tile, size):
  img = Image.fromarray(np.ascontiguousarray(tile.rgb, dtype=np.uint8))
  if img.size == (size[1], size[0]):
    return img
  enlarge = size[0] >= tile.rgb.shape[0]
  smooth = not (tile.crisp or enlarge)
  return img.resize((size[1], size[0]), Image.Resampling.LANCZOS if smooth else
                    Image.Resampling.NEAREST)


def _legend_layout(draw, legend, fnt, width):
  """Lines of (x, name, rgb) wrapped to `width` px."""
  lines, line, x = [], [], 0
  for name, rgb in legend:
    w = _SWATCH + 4 + int(draw.textlength(name, font=fnt)) + 14
    if line and x + w > width:
      lines.append(line)
      line, x = [], 0
    line.append((x, name, rgb))
    x += w
  if line:
    lines.append(line)
  return lines


def labelled_panel(rows, legend=(), caption='', cap=CAP, floor=FLOOR, font_size=13):
  """One figure: a caption line, rows of titled tiles, a colour legend; uint8 [H, W, 3].

  Args:
    rows: a list of rows, each a list of Tile (a flat list of Tiles is one row). Every tile
      shows the same image, so all must have one (H, W): shown at display_size(H, W).
    legend: [(name, (r, g, b))], e.g. legend_entries(...); wrapped to the figure's width.
    caption: a line above the tiles (the image id, its IoU). Titles are wrapped to the tile's
      width; the lines after a '\\n' in one are drawn fainter.
  """
  if rows and isinstance(rows[0], Tile):
    rows = [rows]
  rows = [list(r) for r in rows if r]
  if not rows:
    raise ValueError('labelled_panel needs at least one tile')
  hw = rows[0][0].rgb.shape[:2]
  for tile in (t for r in rows for t in r):
    if tile.rgb.shape[:2] != hw or tile.rgb.ndim != 3:
      raise ValueError(f'tile {tile.title!r} is {tile.rgb.shape}, the first tile '
                       f'{rows[0][0].title!r} is {hw}: the tiles of a figure show one image')
  th, tw = display_size(hw, cap, floor)
  fnt, big = font(font_size), font(font_size + 2)
  line_h = font_size + 4
  width = 2 * _PAD + max(len(r) * tw + (len(r) - 1) * _GAP for r in rows)
  width = max(width, 240)
  probe = ImageDraw.Draw(Image.new('RGB', (1, 1)))
  legend_lines = _legend_layout(probe, legend, fnt, width - 2 * _PAD)
  titles = [[_wrap(probe, t.title, fnt, tw) for t in r] for r in rows]
  title_lines = [max(len(t) for t in r) for r in titles]
  height = _PAD + (line_h + 6 if caption else 0)
  height += sum(n * line_h + 2 + th + _GAP for n in title_lines)
  height += len(legend_lines) * (line_h + 2) + _PAD
  canvas = Image.new('RGB', (width, height), _PAPER)
  draw = ImageDraw.Draw(canvas)
  y = _PAD
  if caption:
    draw.text((_PAD, y), _fit(draw, caption, big, width - 2 * _PAD), fill=_INK, font=big)
    y += line_h + 6
  for row, row_titles, n in zip(rows, titles, title_lines):
    for j, (tile, lines) in enumerate(zip(row, row_titles)):
      x = _PAD + j * (tw + _GAP)
      for k, (text, first) in enumerate(lines):
        draw.text((x, y + k * line_h), text, fill=_INK if first else _FAINT, font=fnt)
      canvas.paste(_resize(tile, (th, tw)), (x, y + n * line_h + 2))
    y += n * line_h + 2 + th + _GAP
  for line in legend_lines:
    for x, name, rgb in line:
      x += _PAD
      draw.rectangle([x, y + 1, x + _SWATCH - 1, y + _SWATCH], fill=rgb, outline=_FAINT)
      draw.text((x + _SWATCH + 4, y), name, fill=_INK, font=fnt)
    y += line_h + 2
  return np.asarray(canvas)


def overlay_figure(image, heat, pred, gt=None, names=None, caption='', heat_title='seed',
                   pred_title='pseudo mask'):
  """The figure of overlays/: image | seed heat | pseudo mask | truth, titled, with a legend.

  Args:
    image: uint8 [H, W, 3]; heat: float [H, W] in [0, 1] or None; pred, gt: uint8 [H, W] label
      maps (gt optional).
    names: label names, background first (index = label); default 'label <i>'.
  """
  tiles = [image_tile('image', image)]
  if heat is not None:
    tiles.append(heat_tile(heat_title, image, heat))
  tiles.append(label_tile(pred_title, pred))
  if gt is not None:
    tiles.append(label_tile('ground truth', gt))
  return labelled_panel([tiles], legend_entries(names or [], pred, gt), caption)


def encode_png(rgb):
  """PNG bytes of a uint8 [H, W, 3] (or [H, W]) array."""
  buf = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format='PNG',
                                                                   optimize=False)
  return buf.getvalue()
