"""report.html: one self-contained page of a run, or of a folder of predictions against masks.

The page holds the scores of every product (the tables of evaluation.md, made by the same
scoring.report), the training curves of every run, a gallery of each split's worst, median and
best images by the per-image mIoU of its final product, the config and the commands that
reproduce the run. It works offline opened from disk: images are base64 PNG data URIs, the style
is inline, nothing is fetched, collapsible parts are plain <details> (no script).

The scores are recomputed from the files with the evaluate stage's own code (each image read
once: summed, its confusion matrices give the tables; per image, the gallery's ranking), so the
page shows what the files hold and says where that differs from summary.json. `workdir_report`
is the export stage's; `folder_report` is `python -m recurseed_jax.evaluate --pred DIR --gt DIR
--report out.html`'s. The gallery is gallery.py's, the figures panels.py's and curves.py's, the
page report_html.py's.
"""

import datetime
import html
import json
import math
import os
import shlex

import numpy as np
from PIL import Image

from recurseed_jax import config_lib
from recurseed_jax import confusion
from recurseed_jax import curves
from recurseed_jax import gallery
from recurseed_jax import io_utils
from recurseed_jax import metrics
from recurseed_jax import report_html
from recurseed_jax import scoring
from recurseed_jax.stages import evaluate as evaluate_stage
from recurseed_jax.stages import products

# The val product a gallery is ranked by: the first of these the workdir has (the final one).
VAL_FINAL = ('multistage_val', 'multistage_val_nocrf', 'val')
IMAGE_EXTS = ('.jpg', '.jpeg', '.png')
Section = report_html.Section


def training_runs():
  """[(workdir subfolder, title)] of every training run a workdir may hold, in pipeline order."""
  return [(name, products.RUN_TITLES[name]) for name, _, _ in products.RUNS] + [
      (config_lib.BOUNDARY_SUBFOLDER, 'boundary network'),
      (config_lib.SEGMENTER_SUBFOLDER, 'multi-stage segmenter')]


# --- the parts of a workdir --------------------------------------------------------------------
def _scored(totals, n):
  return {k: {**confusion.scores(c), 'num_images': n} for k, c in totals.items()}


def _train_part(ctx, names):
  """(gallery.Part, scores) of the training split: its seeds and every kind of pseudo masks, the
  gallery ranked by config.pseudo.method's masks; (None, {}) without seeds."""
  train, _ = products.split_or_none(ctx, 'train')
  if train is None or not len(train) or not os.path.isdir(ctx.path('seeds', 'train')):
    return None, {}
  masks = products.made_pseudo_masks(ctx)
  keys = [f'{k}_seed' for k in products.SEED_KEYS] + [k for k, _ in masks]
  ious, results = {}, {}
  if train.has_masks:
    per_image = {}
    totals = evaluate_stage.train_confusions(ctx, train, len(names), masks, range(len(train)),
                                             per_image=per_image)
    results = _scored(totals, len(train))
    ious = {k: gallery.iou_array(d, range(len(train))) for k, d in per_image.items()}
  final = products.PSEUDO_MASKS[ctx.config.pseudo.method][0]
  ranked = next((k for k in [final] + [k for k, _ in masks] + ['rs_seed'] if k in ious), None)
  titles = {k: products.short_title(k) for k in keys}
  draw = gallery.train_drawer(ctx, train, names, masks, titles, ious)
  return gallery.Part('train', train, ious, ranked, titles, draw), results


def _val_part(ctx, names):
  """(gallery.Part, scores) of the val predictions the workdir holds; (None, {}) without any."""
  val, _ = products.split_or_none(ctx, 'val')
  dirs = {key: ctx.path('predictions', folder) for key, folder in products.VAL_PREDICTIONS
          if os.path.isdir(ctx.path('predictions', folder))}
  if val is None or not len(val) or not dirs:
    return None, {}
  ious, totals = {}, {}
  if val.has_masks:
    for key, folder in dirs.items():
      per_image = {}
      totals[key] = scoring.split_confusion(folder, val, len(names), per_image=per_image)
      ious[key] = gallery.iou_array(per_image.get('conf', {}), val.ids)
  ranked = next((k for k in VAL_FINAL if k in ious), None)
  titles = {k: products.short_title(k) for k in dirs}
  draw = gallery.prediction_drawer(val, names, dirs, titles, ious, val.image)
  return gallery.Part('val', val, ious, ranked, titles, draw), _scored(totals, len(val))


def _runs(ctx):
  """{title: metrics records} of the workdir's training runs that logged anything."""
  runs = {}
  for sub, title in training_runs():
    records = metrics.read_log(ctx.path(sub, 'metrics.jsonl'))
    if records:
      runs[title] = records
  return runs


def _read_summary(path):
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    text = f.read()
  try:
    return json.loads(text)
  except ValueError as e:
    raise ValueError(f'{path} is not valid JSON ({e}); rerun the evaluate stage') from e


def _check_against(summary, results):
  """Notes for every product whose mIoU differs from summary.json's (files changed since)."""
  notes = []
  for key, sc in results.items():
    ref = summary.get(f'{key}_miou')
    if isinstance(ref, (int, float)) and not math.isclose(ref, sc['miou'], abs_tol=5e-4):
      notes.append(f'{products.TABLE_TITLES.get(key, key)}: summary.json says {100 * ref:.1f}, '
                   f'the files now give {100 * sc["miou"]:.1f} (changed since the evaluate '
                   'stage?)')
  return notes


def _seconds_html(summary):
  secs = summary.get('seconds') or {}
  if not secs:
    return ''
  cells = ''.join(f'<tr><td>{html.escape(k)}</td><td class=num>{float(v):.1f}</td></tr>'
                  for k, v in secs.items())
  devices = summary.get('devices')
  tail = f'<p class=note>{devices} device(s).</p>' if devices else ''
  return ('<details><summary>seconds per stage</summary><table><tr><th>stage</th>'
          f'<th class=num>seconds</th></tr>{cells}</table>{tail}</details>')


def _gallery_section(part, names, per_group, num_fixed, title=None, anchor=None):
  samples = gallery.figures(part, per_group, num_fixed)
  if part.ranked_by:
    intro = (f'Ranked by the per-image mIoU of {part.titles[part.ranked_by]}: the {per_group} '
             f'worst, median and best, then {num_fixed} evenly spaced images.')
  else:
    intro = 'No ground truth to rank by: an even sample.'
  body = report_html.legend_html(names) + report_html.gallery_html(samples, intro)
  return Section(title or f'Gallery: {part.name}', body, anchor or f'gallery-{part.name}')


# --- the commands ------------------------------------------------------------------------------
def _flatten(d, prefix=''):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict) and v:
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def _flag_value(v):
  # ml_collections flags parse tuples as Python literals, strings as they are.
  if isinstance(v, list):
    inner = ', '.join(_flag_value(x) if isinstance(x, list) else repr(x) for x in v)
    return f'({inner}{"," if len(v) == 1 else ""})'
  return str(v)


def _as_json(config):
  return json.loads(config.to_json_best_effort())


def reproduce_commands(workdir, config):
  """Shell lines rerunning the run: launch.py on configs/default.py with, as --config.<key>
  overrides, every field of `config` that differs from it; then the report alone."""
  flat, ref = _flatten(_as_json(config)), _flatten(_as_json(config_lib.defaults()))
  base = ['python', 'launch.py', '--config', 'configs/default.py', '--workdir', workdir]
  base += [f'--config.{k}={_flag_value(v)}' for k, v in flat.items() if k in ref and ref[k] != v]
  lines = ['# from the repository root', shlex.join(base)]
  extra = [k for k in flat if k not in ref]
  if extra:
    lines.append('# fields configs/default.py lacks (the run used another config file): '
                 f'{", ".join(extra)}')
  lines += ['# this report alone, from the files of the finished run:',
            shlex.join(['rm', '-f', os.path.join(workdir, 'stages', 'export.json')]),
            shlex.join(base + ['--stages=export'])]
  return lines


def _stamp(where):
  return f'{where} · {datetime.datetime.now().strftime("%Y-%m-%d %H:%M")}'


# --- entry points ------------------------------------------------------------------------------
def workdir_report(ctx, out_path=None, *, commands=None):
  """Builds `<workdir>/report.html` (or out_path) of a run; returns the path.

  ctx: the run's stages.Context (its completed config, workdir, data provider, class names).
  Gallery images per split: config.export.report_per_group worst, median and best, and
  config.export.report_fixed evenly spaced. commands: the shell lines shown as reproducing the
  run (default reproduce_commands).
  """
  if not os.path.isdir(ctx.workdir):
    raise FileNotFoundError(f'no workdir {ctx.workdir} to report on (pass the --workdir of a run)')
  names = ['background'] + list(ctx.class_names)
  train, train_results = _train_part(ctx, names)
  val, val_results = _val_part(ctx, names)
  if train is None and val is None:
    folders = ','.join(f for _, f in products.VAL_PREDICTIONS)
    raise FileNotFoundError(f'nothing to report in {ctx.workdir}: it has no seeds/train/ nor '
                            f'predictions/{{{folders}}}/ (run the seeds stage)')
  scored = {**train_results, **val_results}
  results = {k: scored[k] for k in products.TABLE_TITLES if k in scored}
  summary = _read_summary(ctx.path('summary.json'))
  body = report_html.scores_html(results, ctx.class_names, products.TABLE_TITLES,
                                 _check_against(summary, results)) + _seconds_html(summary)
  sections = [Section('Summary', body, 'summary'),
              Section('Training curves', report_html.curves_html(curves.figures(_runs(ctx))),
                      'curves')]
  export = ctx.config.export
  sections += [_gallery_section(part, names, export.report_per_group, export.report_fixed)
               for part in (train, val) if part is not None]
  commands = reproduce_commands(ctx.workdir, ctx.config) if commands is None else commands
  sections.append(Section('Config and commands', report_html.config_html(
      ctx.config.to_json_best_effort(indent=2), commands), 'config'))
  base = os.path.basename(os.path.abspath(ctx.workdir))
  return report_html.build_report(sections, out_path or ctx.path('report.html'),
                                  f'RecurSeed report: {base}', _stamp(ctx.workdir))


class _FolderSplit:
  """Ids, masks and images of folders (what the gallery reads of a split)."""

  def __init__(self, ids, gt_dir, image_dir):
    self.ids, self.gt_dir, self.image_dir = ids, gt_dir, image_dir
    self.has_masks = True

  def __len__(self):
    return len(self.ids)

  def mask(self, i):
    return io_utils.load_mask_png(os.path.join(self.gt_dir, f'{self.ids[i]}.png'))

  def image(self, i):
    for ext in IMAGE_EXTS:
      path = os.path.join(self.image_dir, self.ids[i] + ext)
      if os.path.exists(path):
        with Image.open(path) as img:
          return np.asarray(img.convert('RGB'))
    raise FileNotFoundError(f'no image {self.ids[i]}{{{",".join(IMAGE_EXTS)}}} in '
                            f'{self.image_dir}')


def folder_report(pred_dir, gt_dir, out_path, result, per_image, class_names, *, image_dir=None,
                  per_group=2, num_fixed=2, command=None):
  """Builds the report of a folder of predicted label PNGs against one of masks; returns the path.

  Args:
    pred_dir, gt_dir: folders of <id>.png label maps (palette or grey; truth 255 = ignore).
    out_path: the page to write.
    result, per_image: scoring.evaluate_dirs(pred_dir, gt_dir, per_image=d)'s result and
      d['conf'] ({image id: its mIoU}, in the order scored).
    class_names: the C foreground names (len(result['iou']) - 1 of them).
    image_dir: optional folder of the images (<id>.jpg / .jpeg / .png), shown in the gallery.
    command: the shell line shown as the one reproducing the page.
  """
  ids = list(per_image)
  names = ['background'] + list(class_names)
  split = _FolderSplit(ids, gt_dir, image_dir)
  key = 'prediction'
  label = os.path.basename(os.path.normpath(pred_dir)) or pred_dir
  titles = {key: label}
  ious = {key: gallery.iou_array(per_image, ids)}
  draw = gallery.prediction_drawer(split, names, {key: pred_dir}, titles, ious,
                                   split.image if image_dir else None)
  part = gallery.Part('folder', split, ious, key, titles, draw)
  against = {key: f'{label} against {os.path.basename(os.path.normpath(gt_dir))}'}
  if command is None:
    command = shlex.join(['python', '-m', 'recurseed_jax.evaluate', '--pred', pred_dir, '--gt',
                          gt_dir, '--report', out_path])
  sections = [Section('Summary', report_html.scores_html({key: result}, class_names, against),
                      'summary'),
              _gallery_section(part, names, per_group, num_fixed, 'Gallery', 'gallery'),
              Section('Commands', report_html.config_html(
                  None, ['# from the repository root', command]), 'config')]
  return report_html.build_report(sections, out_path, f'Predictions report: {label}',
                                  _stamp(f'{pred_dir} against {gt_dir}'))
