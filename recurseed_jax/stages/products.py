"""The workdir's products: where each stage writes what, and how the next one reads it.

- `<run>/` (train, cam_baseline, upper_bound, segmenter): checkpoints, metrics.jsonl.
- `seeds/train/<id>.npz`: per training image, `classes` (uint8 [K], the kept class indices,
  0-based) and [H, W, K] max-normalised scores of those classes (config.infer.seed_dtype:
  float16, or uint8 steps of 1/255): `rs` (RecurSeed: the segmentation head, the authors' seed),
  `rs_cam` (the CAM head of the same network) and, with train.cam_baseline, `cam` (the plain-CAM
  baseline). np.savez_compressed; read with allow_pickle=False.
- `pseudo_masks/<id>.png`: the CRF of the `rs` seed (palette PNG).
- `ir_labels/<id>.png`: relation labels of the `rs` seed (0 background, c + 1, 255 unknown).
- `boundary/`: the boundary network's checkpoints and metrics.
- `pseudo_masks_rw/<id>.png`, `pseudo_masks_rw_crf/<id>.png`: the random walk's pseudo masks,
  and DenseCRF of its scores (config.pseudo.method picks which train_seg trains on).
- `predictions/<name>/<id>.png`: val / test label maps of each product (PREDICTIONS).
- `stages/<name>.json`: a stage's completion marker; `summary.json`, `evaluation.md`.
"""

import collections
import concurrent.futures as cf
import os
import zipfile

from recurseed_jax import io_utils

# (workdir subfolder, supervision, config.train switch or None): the RecurSeed network, the
# plain-CAM baseline (classification loss only) and the fully supervised upper bound.
RUNS = (('train', 'weak', None), ('cam_baseline', 'cam', 'cam_baseline'),
        ('upper_bound', 'full', 'upper_bound'))
RUN_TITLES = dict(train='RecurSeed', cam_baseline='plain-CAM baseline',
                  upper_bound='upper bound')
SEED_KEYS = ('cam', 'rs_cam', 'rs')
# config.pseudo.method -> (summary key, folder) of the pseudo masks it makes.
PSEUDO_MASKS = {'crf': ('pseudo_mask', 'pseudo_masks'),
                'random_walk': ('pseudo_mask_rw', 'pseudo_masks_rw'),
                'random_walk+crf': ('pseudo_mask_rw_crf', 'pseudo_masks_rw_crf')}

# (summary key, predictions/<folder>) scored on val; all but 'val' only when the folder exists.
VAL_PREDICTIONS = (('val', 'val'), ('multistage_val_nocrf', 'seg_val_nocrf'),
                   ('multistage_val', 'seg_val'), ('upper_bound_val', 'val_upper_bound'))
TABLE_TITLES = dict(
    cam_seed='CAM seed, plain-CAM baseline (train)', rs_cam_seed='CAM seed, RecurSeed (train)',
    rs_seed='RecurSeed seed (train)', pseudo_mask='pseudo masks after CRF (train)',
    pseudo_mask_rw='pseudo masks, random walk (train)',
    pseudo_mask_rw_crf='pseudo masks, random walk + CRF (train)',
    val='segmentation head (val)', multistage_val_nocrf='multi-stage segmenter, no CRF (val)',
    multistage_val='multi-stage segmenter + CRF (val)',
    upper_bound_val='fully supervised upper bound (val)')


def enabled_runs(config):
  """[(subfolder, supervision)] of the training runs this config makes."""
  return [(name, sup) for name, sup, switch in RUNS if switch is None or config.train[switch]]


def seed_path(ctx, image_id):
  return ctx.path('seeds', 'train', f'{image_id}.npz')


def mask_path(ctx, image_id, folder='pseudo_masks'):
  return ctx.path(folder, f'{image_id}.png')


def pseudo_mask_folder(config):
  """The folder of the pseudo masks config.pseudo.method makes (what train_seg trains on)."""
  return PSEUDO_MASKS[config.pseudo.method][1]


def made_pseudo_masks(ctx):
  """[(summary key, folder)] of every kind of pseudo masks the workdir holds."""
  return [p for p in PSEUDO_MASKS.values() if os.path.isdir(ctx.path(p[1]))]


def short_title(key):
  """A product's table title without its split: 'RecurSeed seed (train)' -> 'RecurSeed seed'."""
  return TABLE_TITLES.get(key, key).rsplit(' (', 1)[0]


def missing_masks(ctx, split, *folders, indices=None):
  """Of `indices` (default: every image), those without a PNG in every folder (default
  pseudo_masks/)."""
  folders = folders or ('pseudo_masks',)
  indices = range(len(split)) if indices is None else indices
  return [i for i in indices
          if not all(os.path.exists(mask_path(ctx, split.ids[i], f)) for f in folders)]


def load_seed(ctx, image_id):
  """{name: array} of one image's seed file; errors name the file and the stage to rerun."""
  path = seed_path(ctx, image_id)
  if not os.path.exists(path):
    raise FileNotFoundError(f'missing seeds {path}: run the seeds stage (--stages=seeds,crf)')
  try:
    return io_utils.load_npz(path)
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(f'seeds {path} cannot be read ({e}); delete it and rerun the seeds stage '
                     '(--stages=seeds,crf)') from e


def split_or_none(ctx, name):
  """The provider's split `name`, or None (with the reason) where the dataset has none."""
  try:
    return ctx.data.split(name), None
  except (ValueError, FileNotFoundError, KeyError) as e:
    return None, str(e)


class Writer:
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
