"""The pipeline's stages and their bookkeeping (resume, skip, timings, summary).

Each stage reads and writes only inside the workdir and marks itself done with
`<workdir>/stages/<name>.json` (written atomically, holding its seconds) once all its outputs
are complete; a rerun skips marked stages and an interrupted stage resumes from what it wrote.
The data provider is passed in (built by launch.py from data_pipeline/), so this package never
imports tensorflow.
"""

import dataclasses
import json
import os
import time
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from recurseed_jax import crf as crf_lib
from recurseed_jax import evaluate as eval_lib
from recurseed_jax import export as export_lib
from recurseed_jax import infer
from recurseed_jax import io_utils
from recurseed_jax import train as train_lib

STAGES = ('train', 'seeds', 'crf', 'evaluate', 'export')


@dataclasses.dataclass
class Run:
  config: Any
  workdir: str
  data: Any  # .split(name) -> dict(images, masks, labels, ids); .train_batches(start, full)
  class_names: list

  def path(self, *parts):
    return os.path.join(self.workdir, *parts)

  @property
  def num_classes(self):
    return len(self.class_names)


def parse_stages(text):
  names = [s.strip() for s in str(text).split(',') if s.strip()]
  unknown = [s for s in names if s not in STAGES]
  if unknown:
    raise ValueError(f'unknown stage {unknown[0]!r} in --stages; known stages: {", ".join(STAGES)}')
  if not names:
    raise ValueError(f'--stages is empty; known stages: {", ".join(STAGES)}')
  return names


# --- train -------------------------------------------------------------------------------------
# (workdir subfolder, supervision, config switch or None): the RecurSeed network, the plain-CAM
# baseline (classification loss only) and the fully supervised upper bound.
RUNS = (('train', 'weak', None), ('cam_baseline', 'cam', 'cam_baseline'),
        ('upper_bound', 'full', 'upper_bound'))
TITLES = dict(train='RecurSeed', cam_baseline='plain-CAM baseline', upper_bound='upper bound')


def _enabled_runs(config):
  return [(name, sup) for name, sup, switch in RUNS if switch is None or config.train[switch]]


def stage_train(run):
  data = run.data.split('train')
  for name, supervision in _enabled_runs(run.config):
    train_lib.train(run.config, run.path(name), data, supervision=supervision,
                    desc=f'train {TITLES[name]}', data_iter_fn=run.data.train_batches)


# --- seeds -------------------------------------------------------------------------------------
def _infer_split(run, workdir, split, use_labels, desc):
  """Runs multi-scale inference of the model in `workdir` over a split."""
  cfg = run.config
  data = run.data.split(split)
  model, variables = train_lib.restore_variables(cfg, workdir, run.num_classes)
  predict = infer.make_predict_fn(model, cfg.infer.scales, cfg.infer.flip)
  n = len(data['images'])
  with tqdm(total=n, desc=desc, dynamic_ncols=True) as bar:
    for out in infer.run_inference(predict, variables, data['images'], cfg.data.mean,
                                   cfg.data.std, cfg.infer.batch_size,
                                   labels=data['labels'] if use_labels else None,
                                   class_threshold=cfg.infer.class_threshold, progress=bar):
      yield out


def _train_seeds(run, name, with_seg):
  """uint8 seeds of the training images from the model in `name`: its CAM and its seg head."""
  n = len(run.data.split('train')['images'])
  cam_q, seg_q = None, None
  for start, stop, keep, cam, seg in _infer_split(run, run.path(name), 'train', True,
                                                  f'seeds {TITLES[name]}'):
    if cam_q is None:
      cam_q = np.zeros((n,) + cam.shape[1:], np.uint8)
      seg_q = np.zeros_like(cam_q) if with_seg else None
    cam_q[start:stop] = infer.quantize(cam)
    if with_seg:
      seg_q[start:stop] = infer.quantize(infer.seg_scores(seg, keep))
  return cam_q, seg_q


def stage_seeds(run):
  """Seeds of the training images; val predictions of the segmentation head(s).

  seeds/train.npz holds `rs` (RecurSeed: the segmentation head's seed), `rs_cam` (the CAM head
  of the same network) and, when the baseline is trained, `cam` (the plain CAM baseline).
  """
  os.makedirs(run.path('seeds'), exist_ok=True)
  arrays = {}
  arrays['rs_cam'], arrays['rs'] = _train_seeds(run, 'train', with_seg=True)
  if run.config.train.cam_baseline:
    arrays['cam'], _ = _train_seeds(run, 'cam_baseline', with_seg=False)
  io_utils.save_npz(run.path('seeds', 'train.npz'), **arrays)
  sources = [('val', 'train')]
  if run.config.train.upper_bound:
    sources.append(('val_upper_bound', 'upper_bound'))
  for out_name, name in sources:
    preds = []
    for _, _, keep, _, seg in _infer_split(run, run.path(name), 'val', False,
                                           f'predict val {TITLES[name]}'):
      preds.append(np.asarray(infer.segmentation_label_map(seg, keep)))
    io_utils.save_npz(run.path('seeds', f'{out_name}.npz'), pred=np.concatenate(preds))


# --- crf ---------------------------------------------------------------------------------------
def _crf_items(run):
  cfg = run.config
  data = run.data.split('train')
  rs = np.load(run.path('seeds', 'train.npz'), allow_pickle=False)['rs']
  for i, image_id in enumerate(data['ids']):
    keys = np.flatnonzero(data['labels'][i])
    scores = infer.dequantize(rs[i][..., keys])
    seed = np.asarray(infer.seed_with_background(scores[None], cfg.infer.bg_power))[0]
    yield image_id, data['images'][i], seed, keys + 1


def stage_crf(run):
  """DenseCRF on the RecurSeed seeds -> pseudo masks (palette PNGs), resumable per image."""
  cfg = run.config
  result = crf_lib.run_crf(_crf_items(run), run.path('pseudo_masks'),
                           params=crf_lib.crf_params_from_config(cfg.crf),
                           workers=cfg.crf.workers, desc='crf')
  return result


# --- evaluate ----------------------------------------------------------------------------------
def _miou(preds, gts, num_labels):
  conf = np.zeros((num_labels, num_labels), np.int64)
  for p, g in zip(preds, gts):
    conf += eval_lib.confusion_matrix(p, g, num_labels)
  return eval_lib.scores(conf)


def stage_evaluate(run):
  """mIoU of every product against the true masks -> summary.json and evaluation.md."""
  cfg = run.config
  labels = run.num_classes + 1
  train, val = run.data.split('train'), run.data.split('val')
  seeds = np.load(run.path('seeds', 'train.npz'), allow_pickle=False)
  results = {}
  for key in ('cam', 'rs_cam', 'rs'):
    if key not in seeds:
      continue
    q = seeds[key]
    preds = (np.asarray(infer.seed_label_map(infer.dequantize(q[i:i + 64]), cfg.infer.bg_power))
             for i in range(0, len(q), 64))
    results[f'{key}_seed'] = _miou((p for batch in preds for p in batch), train['masks'], labels)
  masks = (io_utils.load_mask_png(run.path('pseudo_masks', f'{i}.png')) for i in train['ids'])
  results['pseudo_mask'] = _miou(masks, train['masks'], labels)
  results['val'] = _miou(np.load(run.path('seeds', 'val.npz'))['pred'], val['masks'], labels)
  if os.path.exists(run.path('seeds', 'val_upper_bound.npz')):
    results['upper_bound_val'] = _miou(np.load(run.path('seeds', 'val_upper_bound.npz'))['pred'],
                                       val['masks'], labels)
  names = ['background'] + list(run.class_names)
  report = []
  for key, sc in results.items():
    report.append(f'## {key}\n\n' + eval_lib.format_table(sc, names) + '\n')
  io_utils.atomic_write_bytes(run.path('evaluation.md'), '\n'.join(report).encode())
  summary = {f'{k}_miou': float(v['miou']) for k, v in results.items()}
  io_utils.save_json(run.path('summary.json'), summary)


# --- export ------------------------------------------------------------------------------------
def stage_export(run):
  """Overlays (image | RecurSeed seed | pseudo mask | truth) for a sample of training images."""
  cfg = run.config
  train = run.data.split('train')
  rs = np.load(run.path('seeds', 'train.npz'), allow_pickle=False)['rs']
  k = min(cfg.export.num_overlays, len(train['ids']))

  def panels():
    for i in range(k):
      heat = infer.dequantize(rs[i]).max(axis=-1)
      pred = io_utils.load_mask_png(run.path('pseudo_masks', f"{train['ids'][i]}.png"))
      yield (train['ids'][i],
             export_lib.overlay_panel(train['images'][i], heat, pred, train['masks'][i]))

  export_lib.write_overlays(run.path('overlays'), panels())


_FUNCS = dict(train=stage_train, seeds=stage_seeds, crf=stage_crf, evaluate=stage_evaluate,
              export=stage_export)


def run_stages(run, names, log=print):
  """Runs the named stages in pipeline order, skipping those already marked done."""
  os.makedirs(run.path('stages'), exist_ok=True)
  for name in STAGES:
    if name not in names:
      continue
    marker = run.path('stages', f'{name}.json')
    if os.path.exists(marker):
      log(f'[{name}] done already, skipping (delete {marker} to redo)')
      continue
    log(f'[{name}] running')
    t0 = time.time()
    _FUNCS[name](run)
    io_utils.save_json(marker, dict(seconds=round(time.time() - t0, 2)))
  return finalize_summary(run)


def finalize_summary(run):
  """Adds per-stage seconds to summary.json (if the evaluation exists) and returns it."""
  path = run.path('summary.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    summary = json.load(f)
  seconds = {}
  for name in STAGES:
    marker = run.path('stages', f'{name}.json')
    if os.path.exists(marker):
      with open(marker) as f:
        seconds[name] = json.load(f)['seconds']
  summary['seconds'] = seconds
  summary['devices'] = jax.device_count()
  io_utils.save_json(path, summary)
  return summary


def format_summary(summary):
  rows = [('CAM seed, plain-CAM baseline (train)', 'cam_seed_miou'),
          ('CAM seed, RecurSeed network (train)', 'rs_cam_seed_miou'),
          ('RecurSeed seed (train)', 'rs_seed_miou'),
          ('pseudo masks after CRF (train)', 'pseudo_mask_miou'),
          ('segmentation head (val)', 'val_miou'),
          ('fully supervised upper bound (val)', 'upper_bound_val_miou')]
  lines = ['| product | mIoU % |', '|---|---|']
  for title, key in rows:
    if key in summary:
      lines.append(f'| {title} | {100 * summary[key]:.1f} |')
  secs = summary.get('seconds', {})
  if secs:
    lines.append('')
    lines.append('seconds per stage: ' + ', '.join(f'{k} {v:.0f}' for k, v in secs.items()))
  return '\n'.join(lines)
