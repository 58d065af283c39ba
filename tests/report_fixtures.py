"""Fake finished runs in the workdir layout (stages/products.py), and a parser of report.html.

A workdir here holds what a run of the whole paper leaves: seeds/train/<id>.npz (classes, rs,
rs_cam, cam), pseudo_masks/ and pseudo_masks_rw_crf/ (config.pseudo.method = 'random_walk+crf'),
predictions/{val,seg_val}/, the metrics.jsonl of the RecurSeed, plain-CAM, boundary and segmenter
runs, and a summary.json whose figures are re-derived here from the files (confusion.py on whole
sums, no report code). Masks are rectangles of 1-2 classes with an ignore band; products are the
truth with a per-image share of pixels changed, so per-image IoUs spread.
"""

import html.parser
import json
import os

import numpy as np

from data_pipeline import splits
from recurseed_jax import config_lib
from recurseed_jax import confusion
from recurseed_jax import infer
from recurseed_jax import io_utils
from recurseed_jax import stages


class Provider:
  """The splits of a fake run (what a stage reads of data_pipeline/providers.py)."""

  def __init__(self, class_names, **split_by_name):
    self.class_names = list(class_names)
    self.splits = split_by_name

  def split(self, name):
    if name not in self.splits:
      raise KeyError(f'no {name} split')
    return self.splits[name]


def _masks(rng, n, hw, num_classes):
  h, w = hw
  masks = np.zeros((n, h, w), np.uint8)
  labels = np.zeros((n, num_classes), np.float32)
  for i in range(n):
    for c in rng.choice(num_classes, size=1 + i % 2, replace=False).tolist():
      y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
      y1, x1 = y0 + rng.integers(h // 4, h // 2), x0 + rng.integers(w // 4, w // 2)
      masks[i, y0:y1, x0:x1] = c + 1
      masks[i, min(y1, h - 1), x0:x1] = 255
    present = np.unique(masks[i])
    labels[i, [v - 1 for v in present.tolist() if 0 < v < 255]] = 1
  return masks, labels


def _images(rng, masks):
  n, h, w = masks.shape
  yy, xx = np.mgrid[:h, :w]
  base = np.stack([xx * 200 // w, yy * 200 // h, np.full_like(xx, 90)], -1)
  tint = io_utils.voc_palette()[masks] // 3
  noise = rng.integers(0, 30, (n, h, w, 3))
  return np.clip(base[None] + tint + noise, 0, 255).astype(np.uint8)


def _corrupt(rng, truth, share, num_labels):
  out = np.where(truth == 255, 0, truth).astype(np.uint8)
  flip = rng.random(out.shape) < share
  out[flip] = rng.integers(0, num_labels, int(flip.sum()))
  return out


def _seed(rng, mask, classes, strength):
  """uint8 [H, W, K] scores of the kept classes: high on the class, noise elsewhere."""
  h, w = mask.shape
  k = len(classes)
  s = rng.random((h, w, k)) * (1 - strength)
  for j, c in enumerate(classes):
    s[..., j] += strength * (mask == c + 1)
  s /= np.maximum(s.max(axis=(0, 1), keepdims=True), 1e-6)
  return (255 * s + 0.5).astype(np.uint8)


# The terms each run's objective logs (objectives.py), beside lr and the throughput.
RUN_TERMS = dict(train=('cls', 'cam', 'seg'), cam_baseline=('cls',), boundary=(
    'bg_pos', 'fg_pos', 'neg', 'boundary'), segmenter=('seg',))


def write_metrics(path, steps, terms):
  """A metrics.jsonl of `terms` (and loss, lr, ...), ending in a line cut short by a kill."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  seeds = 'cls' in terms
  with open(path, 'w') as f:
    for j, step in enumerate(steps):
      t = step / steps[-1]
      rec = dict(loss=1.5 - t, lr=0.1 * (1 - t) ** 0.9, img_per_s=20.0, seconds=float(step),
                 nonfinite=0.0, nonfinite_run=0.0, step=step)
      rec.update({k: 0.7 - 0.5 * t + 0.01 * n for n, k in enumerate(terms)})
      if seeds:
        rec['seed_miou'] = 0.2 + 0.4 * t * (1.0 if 'seg' in terms else 0.6)
      if 'seg' in terms and 'cam' in terms:
        rec.update(seed_coverage=0.6 + 0.3 * t, seed_precision=0.5 + 0.3 * t)
        if j % 2:
          rec.update(mix_cls=0.6 - 0.4 * t, mix_seg=0.4 - 0.2 * t)
      f.write(json.dumps(rec) + '\n')
    f.write('{"loss": 0.1, "st')


def make_workdir(root, n_train=10, n_val=6, num_classes=3, hw=(24, 32), seed=0, log_points=6):
  """Writes a fake finished run into `root`; returns (its stages.Context, summary dict)."""
  rng = np.random.default_rng(seed)
  num_labels = num_classes + 1
  class_names = [f'shape{c}' for c in range(num_classes)]
  tm, tl = _masks(rng, n_train, hw, num_classes)
  vm, vl = _masks(rng, n_val, hw, num_classes)
  train = splits.ArraySplit([f'train_{i:05d}' for i in range(n_train)], _images(rng, tm), tl, tm)
  val = splits.ArraySplit([f'val_{i:05d}' for i in range(n_val)], _images(rng, vm), vl, vm)
  config = config_lib.defaults()
  config.data.num_classes = num_classes
  config.train.steps = 10 * log_points
  config.train.cam_baseline = True
  config.pseudo.method = 'random_walk+crf'
  bg_power = config.infer.bg_power
  share = rng.permutation(np.linspace(0.0, 0.7, n_train))
  confs = {}

  def add(key, pred, gt):
    conf = confusion.confusion_matrix(pred, gt, num_labels)
    confs[key] = confs[key] + conf if key in confs else conf

  masks = (('pseudo_mask', 'pseudo_masks', 0.0), ('pseudo_mask_rw_crf', 'pseudo_masks_rw_crf',
                                                   0.1))
  for d in ('seeds/train', 'pseudo_masks', 'pseudo_masks_rw_crf', 'predictions/val',
            'predictions/seg_val', 'stages'):
    os.makedirs(os.path.join(root, d), exist_ok=True)
  for i, image_id in enumerate(train.ids):
    classes = np.flatnonzero(tl[i]).astype(np.uint8)
    arrays = dict(classes=classes)
    for key, strength in (('cam', 0.3), ('rs_cam', 0.42), ('rs', 0.48)):
      arrays[key] = _seed(rng, tm[i], classes.tolist(), strength)
      add(f'{key}_seed', infer.host_seed_labels(arrays[key], classes, bg_power), tm[i])
    io_utils.save_npz_compressed(os.path.join(root, 'seeds', 'train', f'{image_id}.npz'),
                                 **arrays)
    for key, folder, extra in masks:  # the walk's: a shuffled share, so the rankings differ
      pseudo = _corrupt(rng, tm[i], share[(i + 3 * (extra > 0)) % n_train] + extra, num_labels)
      io_utils.save_palette_png(os.path.join(root, folder, f'{image_id}.png'), pseudo)
      add(key, pseudo, tm[i])
  for i, image_id in enumerate(val.ids):
    for key, folder, s in (('val', 'val', 0.4), ('multistage_val', 'seg_val', 0.2)):
      pred = _corrupt(rng, vm[i], s * rng.random(), num_labels)
      io_utils.save_palette_png(os.path.join(root, 'predictions', folder, f'{image_id}.png'),
                                pred)
      add(key, pred, vm[i])
  steps = [int(s) for s in np.linspace(10, 10 * log_points, log_points)]
  for run, terms in RUN_TERMS.items():
    write_metrics(os.path.join(root, run, 'metrics.jsonl'), steps, terms)
  io_utils.save_json(os.path.join(root, 'config.json'), json.loads(config.to_json_best_effort()))
  summary = {f'{k}_miou': float(confusion.scores(c)['miou']) for k, c in confs.items()}
  summary['seconds'] = {'train_rs': 12.0, 'seeds+crf': 1.5, 'evaluate': 0.2}
  summary['devices'] = 1
  io_utils.save_json(os.path.join(root, 'summary.json'), summary)
  ctx = stages.Context(config=config, workdir=root, data=Provider(class_names, train=train,
                                                                   val=val),
                       class_names=tuple(class_names), log=lambda *a: None)
  return ctx, summary


class Page(html.parser.HTMLParser):
  """A report's images, tables (rows of cell texts), gallery figures and <details> count."""

  def __init__(self, text):
    super().__init__()
    self.imgs, self.tables, self.figures, self.details = [], [], [], 0
    self._cell = None
    self._section = None
    self.feed(text)

  def handle_starttag(self, tag, attrs):
    a = dict(attrs)
    if tag == 'section':
      self._section = a.get('id')
    elif tag == 'img':
      self.imgs.append(dict(a, section=self._section))
    elif tag == 'table':
      self.tables.append([])
    elif tag == 'tr':
      self.tables[-1].append([])
    elif tag in ('td', 'th'):
      self._cell = []
    elif tag == 'figure' and a.get('class') == 'sample':
      self.figures.append(dict(a, section=self._section))
    elif tag == 'details':
      self.details += 1

  def handle_endtag(self, tag):
    if tag in ('td', 'th'):
      self.tables[-1][-1].append(''.join(self._cell).strip())
      self._cell = None

  def handle_data(self, data):
    if self._cell is not None:
      self._cell.append(data)

  def summary_rows(self):
    """{product title: its row} of the summary table (the page's first)."""
    return {row[0]: row for row in self.tables[0][1:]}
