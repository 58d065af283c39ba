"""The pipeline's stages and their bookkeeping (resume, skip, timings, summary).

Each stage reads and writes only inside the workdir and marks itself done with
`<workdir>/stages/<name>.json` (written atomically, holding its seconds) once all its outputs
are complete; a rerun skips marked stages and an interrupted stage resumes from what it wrote.
The data provider is passed in (built by launch.py from data_pipeline/), so this package never
imports tensorflow.
"""

import collections
import concurrent.futures as cf
import dataclasses
import functools
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
from recurseed_jax import multistage
from recurseed_jax import parallel
from recurseed_jax import train as train_lib

# The whole paper in pipeline order: RecurSeed training, its seeds and pseudo masks, the
# multi-stage segmenter trained on them and its predictions, then scoring and export.
STAGES = ('train_rs', 'seeds', 'crf', 'train_seg', 'predict', 'evaluate', 'export')
ALIASES = {'train': 'train_rs'}  # the name before the multi-stage stages existed


@dataclasses.dataclass
class Run:
  config: Any
  workdir: str
  data: Any  # provider: .split(name) (data_pipeline/splits.py), .train_batches(start_step)
  class_names: list

  def path(self, *parts):
    return os.path.join(self.workdir, *parts)

  @property
  def num_classes(self):
    return len(self.class_names)


def parse_stages(text):
  names = [ALIASES.get(s.strip(), s.strip()) for s in str(text).split(',') if s.strip()]
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


def stage_train_rs(run):
  def batches(start_step):  # this process's slice of every global batch (multi-host)
    return run.data.train_batches(start_step, process_index=jax.process_index(),
                                  process_count=jax.process_count())

  for name, supervision in _enabled_runs(run.config):
    train_lib.train(run.config, run.path(name), run.num_classes, supervision=supervision,
                    desc=f'train {TITLES[name]}', data_iter_fn=batches)


# --- seeds -------------------------------------------------------------------------------------
# Seeds of one training image: seeds/train/<id>.npz (np.savez_compressed, load with
# allow_pickle=False) holding `classes` (uint8 [K], the kept class indices, 0-based) and uint8
# [H, W, K] max-normalised scores of those classes, quantised to 1/255: `rs` (RecurSeed: the
# segmentation head), `rs_cam` (the CAM head of the same network) and, with train.cam_baseline,
# `cam` (the plain-CAM baseline). Val / test predictions: predictions/<name>/<id>.png.
SEED_KEYS = ('cam', 'rs_cam', 'rs')


def _seed_path(run, image_id):
  return run.path('seeds', 'train', f'{image_id}.npz')


def _mask_path(run, image_id):
  return run.path('pseudo_masks', f'{image_id}.png')


def _split_or_none(run, name):
  """The provider's split `name`, or None (with the reason) where the dataset has none."""
  try:
    return run.data.split(name), None
  except (ValueError, FileNotFoundError, KeyError) as e:
    return None, str(e)


class _Writer:
  """Encodes and writes files on a few threads (zlib and PNG release the GIL), boundedly."""

  def __init__(self, threads, limit=64):
    self.pool = cf.ThreadPoolExecutor(max(int(threads), 1), thread_name_prefix='writer')
    self.pending = collections.deque()
    self.limit = limit

  def submit(self, fn, *args, **kwargs):
    while len(self.pending) >= self.limit:
      self.pending.popleft().result()
    self.pending.append(self.pool.submit(fn, *args, **kwargs))

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    try:
      while self.pending:
        self.pending.popleft().result()
    finally:
      self.pool.shutdown(wait=True, cancel_futures=True)


class _Inference:
  """Models restored on first use, one predict function, the batch sharding over all devices.

  `segmenter`: the models are multi-stage DeepLabNets, whose step is make_segmenter_step.
  """

  def __init__(self, run, segmenter=False):
    self.run = run
    self.segmenter = segmenter
    cfg = run.config
    self.mesh = parallel.make_mesh(jax.local_devices())
    if cfg.infer.batch_size % self.mesh.size:
      raise ValueError(f'config.infer.batch_size={cfg.infer.batch_size} must be a multiple of the '
                       f'{self.mesh.size} devices (each takes an equal share of a batch)')
    self.sharding = parallel.batch_sharding(self.mesh) if self.mesh.size > 1 else None
    self.model = None
    self._variables = {}
    self._steps = {}

  def variables(self, name):
    if name not in self._variables:
      model, v = train_lib.restore_variables(self.run.config, self.run.path(name),
                                             self.run.num_classes)
      if self.model is None:  # one architecture: every run shares the compiled step
        self.model = model
      self._variables[name] = v if self.sharding is None else parallel.replicate(v, self.mesh)
    return self._variables[name]

  def step(self, num_kept):
    if num_kept not in self._steps:
      self._steps[num_kept] = infer.step_from_config(self.run.config, self.model, num_kept,
                                                     self.segmenter)
    return self._steps[num_kept]

  def run_split(self, names, split, indices, num_kept, desc):
    """run_split of the models in workdir subfolders `names` ({key: subfolder})."""
    cfg = self.run.config
    variables = {key: self.variables(name) for key, name in names.items()}
    with tqdm(total=len(indices), desc=desc, unit='img', dynamic_ncols=True) as bar:
      yield from infer.run_split(self.step(num_kept), variables, split, indices,
                                 cfg.infer.buckets, cfg.infer.batch_size,
                                 with_labels=num_kept is not None, sharding=self.sharding,
                                 prefetch=cfg.infer.prefetch, progress=bar)


def _crf_image(config, image):
  return crf_lib.crf_image(image, config.crf.image, config.data.mean, config.data.std)


def _crf_item(config, image_id, image, scores, classes):
  """A stored seed's CRF item: the CRF image, background + kept classes, their label ids."""
  labels = np.concatenate([[0], np.asarray(classes, np.int64) + 1])
  return (image_id, _crf_image(config, image), infer.host_seed(scores, config.infer.bg_power),
          labels)


def _load_seed(run, image_id):
  path = _seed_path(run, image_id)
  if not os.path.exists(path):
    raise FileNotFoundError(f'missing seeds {path}: run the seeds stage (--stages=seeds,crf)')
  import zipfile  # pylint: disable=g-import-not-at-top
  try:
    with np.load(path, allow_pickle=False) as z:  # data, never code: pickles are refused
      return {k: z[k] for k in z.files}
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(f'seeds {path} cannot be read ({e}); delete it and rerun the seeds stage '
                     '(--stages=seeds,crf)') from e


def _seeds_pipeline(run, with_crf):
  """Everything the seeds stage does, resumably; yields CRF items when `with_crf`.

  Training images without a seed file get their seeds (one decode, every model on the batch);
  with `with_crf`, the RecurSeed seed of each image whose pseudo mask is missing is yielded as it
  comes off the device. Then the val (and test) predictions. Last, seeds saved by an earlier run
  whose pseudo mask is still missing are yielded from disk.
  """
  cfg = run.config
  train = run.data.split('train')
  os.makedirs(run.path('seeds', 'train'), exist_ok=True)
  todo = [i for i, image_id in enumerate(train.ids)
          if not os.path.exists(_seed_path(run, image_id))]
  engine = _Inference(run)
  with _Writer(cfg.infer.io_threads) as writer:
    if todo:
      names = {'rs': 'train'}
      if cfg.train.cam_baseline:
        names['cam'] = 'cam_baseline'
      num_kept = max(1, int((train.labels[todo] > 0).sum(axis=1).max()))
      enc = functools.partial(infer.encode_seed, dtype=cfg.infer.seed_dtype)
      for i, image, out in engine.run_split(names, train, todo, num_kept, 'seeds'):
        image_id = train.ids[i]
        rs = out['rs']
        arrays = dict(classes=rs['classes'].astype(np.uint8), rs=enc(rs['seg']),
                      rs_cam=enc(rs['cam']))
        if 'cam' in out:
          arrays['cam'] = enc(out['cam']['cam'])
        writer.submit(io_utils.save_npz_compressed, _seed_path(run, image_id), **arrays)
        if with_crf and not os.path.exists(_mask_path(run, image_id)):
          # What was stored, not the float seed: a CRF resumed from disk gives the same masks.
          yield _crf_item(cfg, image_id, image, arrays['rs'], arrays['classes'])
    for split_name, names in _prediction_targets(run):
      if split_name == 'test':  # only some datasets have one
        split, _ = _split_or_none(run, split_name)
        if split is None:
          continue
      else:
        split = run.data.split(split_name)
      dirs = {key: run.path('predictions', key) for key in names}
      for d in dirs.values():
        os.makedirs(d, exist_ok=True)
      todo_p = [i for i, image_id in enumerate(split.ids)
                if not all(os.path.exists(os.path.join(d, f'{image_id}.png'))
                           for d in dirs.values())]
      if not todo_p:
        continue
      for i, _, out in engine.run_split(names, split, todo_p, None, f'predict {split_name}'):
        for key, res in out.items():
          path = os.path.join(dirs[key], f'{split.ids[i]}.png')
          if not os.path.exists(path):
            writer.submit(io_utils.save_palette_png, path, res['pred'])
  if with_crf:
    done = set(todo)
    for i, image_id in enumerate(train.ids):
      if i not in done and not os.path.exists(_mask_path(run, image_id)):
        seed = _load_seed(run, image_id)
        yield _crf_item(cfg, image_id, train.image(i), seed['rs'], seed['classes'])


def _prediction_targets(run):
  """[(split, {output name: model subfolder})]: the segmentation head(s) on val, and on test."""
  val = {'val': 'train'}
  if run.config.train.upper_bound:
    val['val_upper_bound'] = 'upper_bound'
  return [('val', val), ('test', {'test': 'train'})]


def stage_seeds(run):
  """Seeds of the training images (seeds/train/<id>.npz); val/test predictions (PNG)."""
  for _ in _seeds_pipeline(run, with_crf=False):
    pass


# --- crf ---------------------------------------------------------------------------------------
def _crf_kwargs(run, total, desc='crf'):
  cfg = run.config
  return dict(params=crf_lib.crf_params_from_config(cfg.crf), workers=cfg.crf.workers,
              queue_size=cfg.crf.queue_size, desc=desc, total=total)


def _missing_masks(run, train):
  return [i for i, image_id in enumerate(train.ids)
          if not os.path.exists(_mask_path(run, image_id))]


def stage_crf(run):
  """DenseCRF on the saved RecurSeed seeds -> pseudo masks (palette PNGs), resumable per image."""
  cfg = run.config
  train = run.data.split('train')
  todo = _missing_masks(run, train)

  def items():
    for i in todo:
      seed = _load_seed(run, train.ids[i])
      yield _crf_item(cfg, train.ids[i], train.image(i), seed['rs'], seed['classes'])

  return crf_lib.run_crf(items(), run.path('pseudo_masks'), **_crf_kwargs(run, len(todo)))


def stage_seeds_and_crf(run):
  """Both stages at once: each RecurSeed seed goes to the CRF pool while the device goes on."""
  total = len(_missing_masks(run, run.data.split('train')))
  return crf_lib.run_crf(_seeds_pipeline(run, with_crf=True), run.path('pseudo_masks'),
                         **_crf_kwargs(run, total))


# --- train_seg ---------------------------------------------------------------------------------
def stage_train_seg(run):
  """The multi-stage segmenter (a DeepLabNet, config.seg) trained on the pseudo masks."""
  cfg = multistage.seg_config(run.config)
  mask_dir = run.path('pseudo_masks')

  def batches(start_step):
    return run.data.train_batches(start_step, process_index=jax.process_index(),
                                  process_count=jax.process_count(), config=cfg,
                                  mask_dir=mask_dir)

  train_lib.train(cfg, run.path(multistage.SUBFOLDER), run.num_classes, supervision='seg',
                  desc='train segmenter', data_iter_fn=batches)


# --- predict -----------------------------------------------------------------------------------
# predictions/seg_<split>/<id>.png: the segmenter after the CRF (the multi-stage result);
# predictions/seg_<split>_nocrf/<id>.png: its argmax over background + kept classes.
def stage_predict(run):
  """The segmenter on val (and test): scales + flip at config.seg.predict_model, CRF, PNGs."""
  prun = dataclasses.replace(run, config=multistage.predict_config(run.config))
  cfg = prun.config
  engine = _Inference(prun, segmenter=True)
  for split_name in ('val', 'test'):
    split, why = _split_or_none(run, split_name)
    if split is None:
      if split_name == 'val':
        raise ValueError(f'predict: no val split ({why})')
      continue
    crf_dir, raw_dir = run.path('predictions', f'seg_{split_name}'), run.path(
        'predictions', f'seg_{split_name}_nocrf')
    os.makedirs(raw_dir, exist_ok=True)
    todo = [i for i, image_id in enumerate(split.ids)
            if not (os.path.exists(os.path.join(crf_dir, f'{image_id}.png')) and
                    os.path.exists(os.path.join(raw_dir, f'{image_id}.png')))]
    if not todo:
      continue

    def items(split=split, todo=todo, raw_dir=raw_dir, split_name=split_name):
      with _Writer(cfg.infer.io_threads) as writer:
        for i, image, out in engine.run_split({'seg': multistage.SUBFOLDER}, split, todo, None,
                                              f'predict {split_name}'):
          res, image_id = out['seg'], split.ids[i]
          raw = os.path.join(raw_dir, f'{image_id}.png')
          if not os.path.exists(raw):
            writer.submit(io_utils.save_palette_png, raw, res['pred'])
          yield image_id, _crf_image(cfg, image), res['probs'], res['channels']

    crf_lib.run_crf(items(), crf_dir, **_crf_kwargs(prun, len(todo), f'crf {split_name}'))


# --- evaluate ----------------------------------------------------------------------------------
def _train_confusions(run, train, num_labels, with_masks=True):
  """Confusion matrices of every seed kind and (with_masks) of the pseudo masks, on train."""
  bg_power = run.config.infer.bg_power

  def one(i):
    image_id = train.ids[i]
    gt = train.mask(i)
    out = {}
    seed = _load_seed(run, image_id)
    for key in SEED_KEYS:
      if key in seed:
        pred = infer.host_seed_labels(seed[key], seed['classes'], bg_power)
        out[f'{key}_seed'] = eval_lib.confusion_matrix(pred, gt, num_labels)
    if with_masks:
      path = _mask_path(run, image_id)
      if not os.path.exists(path):
        raise FileNotFoundError(f'missing pseudo mask {path}: run the crf stage')
      out['pseudo_mask'] = eval_lib.confusion_matrix(io_utils.load_mask_png(path), gt, num_labels)
    return out

  return eval_lib.sum_confusions(one, range(len(train)), desc='evaluate train')


def stage_evaluate(run, log=print):
  """mIoU, per-class IoU and FP/FN of every product -> summary.json and evaluation.md."""
  num_labels = run.num_classes + 1
  results = {}
  train = run.data.split('train')
  if train.has_masks:
    # Without a crf stage (the ablation runs none) only the seeds are scored.
    with_masks = os.path.isdir(run.path('pseudo_masks'))
    if not with_masks:
      log('[evaluate] no pseudo_masks folder (the crf stage did not run): seeds only')
    confs = _train_confusions(run, train, num_labels, with_masks)
    results = {key: {**eval_lib.scores(confs[key]), 'num_images': len(train)} for key in
               [f'{k}_seed' for k in SEED_KEYS] + ['pseudo_mask'] if key in confs}
  else:
    log('[evaluate] the train split has no masks: seeds and pseudo masks are not scored')
  val = run.data.split('val')
  for key, folder in VAL_PREDICTIONS:
    pred_dir = run.path('predictions', folder)
    if val.has_masks and (key == 'val' or os.path.isdir(pred_dir)):
      results[key] = eval_lib.evaluate_split(pred_dir, val, num_labels)
  names = ['background'] + list(run.class_names)
  io_utils.atomic_write_bytes(run.path('evaluation.md'),
                              eval_lib.report(results, names, TABLE_TITLES).encode())
  io_utils.save_json(run.path('summary.json'),
                     {f'{k}_miou': float(v['miou']) for k, v in results.items()})


# (summary key, predictions/<folder>) scored on val; all but 'val' only when the folder exists.
VAL_PREDICTIONS = (('val', 'val'), ('multistage_val_nocrf', 'seg_val_nocrf'),
                   ('multistage_val', 'seg_val'), ('upper_bound_val', 'val_upper_bound'))
TABLE_TITLES = dict(
    cam_seed='CAM seed, plain-CAM baseline (train)', rs_cam_seed='CAM seed, RecurSeed (train)',
    rs_seed='RecurSeed seed (train)', pseudo_mask='pseudo masks after CRF (train)',
    val='segmentation head (val)', multistage_val_nocrf='multi-stage segmenter, no CRF (val)',
    multistage_val='multi-stage segmenter + CRF (val)',
    upper_bound_val='fully supervised upper bound (val)')


# --- export ------------------------------------------------------------------------------------
def stage_export(run, log=print):
  """Overlays of a sample of training images; the VOC test submission; masks in a chosen format.

  overlays/<id>.png: image | RecurSeed seed heat | pseudo mask | truth. submission/results/
  VOC2012/Segmentation/comp6_test_cls/<id>.png and submission/results.tar.gz when the dataset
  has a test split. export/<folder>/<id>.png for each folder of config.export.mask_dirs.
  """
  cfg = run.config
  train = run.data.split('train')
  n = len(train)
  k = min(cfg.export.num_overlays, n)
  sample = sorted(set(np.linspace(0, n - 1, k).round().astype(int).tolist())) if k else []

  def panels():
    for i in sample:
      image_id = train.ids[i]
      image = train.image(i)
      rs = _load_seed(run, image_id)['rs']
      heat = infer.dequantize(rs).max(axis=-1) if rs.shape[-1] else np.zeros(image.shape[:2])
      pred = io_utils.load_mask_png(_mask_path(run, image_id))
      gt = train.mask(i) if train.has_masks else None
      yield image_id, export_lib.overlay_panel(image, heat, pred, gt)

  export_lib.write_overlays(run.path('overlays'), panels())
  test, why = _split_or_none(run, 'test')
  if not cfg.export.submission:
    pass
  elif test is None:
    log(f'[export] no test split, VOC submission skipped ({why})')
  else:
    # The multi-stage segmenter's test predictions when the predict stage made them.
    folder = 'seg_test' if os.path.isdir(run.path('predictions', 'seg_test')) else 'test'
    tar = export_lib.voc_submission_tree(run.path('predictions', folder), run.path('submission'),
                                         ids=test.ids)
    log(f'[export] VOC test submission of predictions/{folder}: {tar}')
  for folder in [f.strip() for f in cfg.export.mask_dirs.split(',') if f.strip()]:
    out = export_lib.write_masks(run.path(folder), run.path('export', folder),
                                 cfg.export.mask_format)
    log(f'[export] {len(out)} masks of {folder} -> {run.path("export", folder)} '
        f'({cfg.export.mask_format})')


_FUNCS = dict(train_rs=stage_train_rs, seeds=stage_seeds, crf=stage_crf,
              train_seg=stage_train_seg, predict=stage_predict, evaluate=stage_evaluate,
              export=stage_export)


def run_stages(run, names, log=print):
  """Runs the named stages in pipeline order, skipping those already marked done.

  When both 'seeds' and 'crf' are to run, they run together (stage_seeds_and_crf) and both are
  marked done at the end.
  """
  os.makedirs(run.path('stages'), exist_ok=True)

  def marker(name):
    return run.path('stages', f'{name}.json')

  todo = [n for n in STAGES if n in names and not os.path.exists(marker(n))]
  together = 'seeds' in todo and 'crf' in todo
  for name in STAGES:
    if name not in names:
      continue
    if name not in todo:
      log(f'[{name}] done already, skipping (delete {marker(name)} to redo)')
      continue
    if together and name == 'crf':
      continue  # ran with the seeds
    t0 = time.time()
    if together and name == 'seeds':
      log('[seeds+crf] running (seeds stream into the CRF pool)')
      stage_seeds_and_crf(run)
      for n in ('seeds', 'crf'):
        io_utils.save_json(marker(n), dict(seconds=round(time.time() - t0, 2),
                                           overlapped='seeds+crf'))
      continue
    log(f'[{name}] running')
    if name in ('evaluate', 'export'):
      _FUNCS[name](run, log=log)
    else:
      _FUNCS[name](run)
    io_utils.save_json(marker(name), dict(seconds=round(time.time() - t0, 2)))
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
  rows = [(title, f'{key}_miou') for key, title in TABLE_TITLES.items()]
  lines = ['| product | mIoU % |', '|---|---|']
  for title, key in rows:
    if key in summary:
      lines.append(f'| {title} | {100 * summary[key]:.1f} |')
  secs = summary.get('seconds', {})
  if secs:
    lines.append('')
    lines.append('seconds per stage: ' + ', '.join(f'{k} {v:.0f}' for k, v in secs.items()))
  return '\n'.join(lines)
