"""DenseCRF refinement of seeds into pseudo masks (METHOD.md section 5), on a host process pool.

The CRF runs over the labels kept for each image only (background + the image's classes for seeds;
the labels above the threshold for the segmenter; its cost grows with the label count), and the
argmax is mapped back to the dataset's label space. What the CRF sees follows the authors'
convert_seed_to_pseudo_masks.py + core/refinements/densecrf.py: unary -log(clip(p, 1e-5, 1)) of
the scores as given (pydensecrf's unary_from_softmax; no renormalisation), an image with fewer
than two labels is all background without a CRF, and (crf.image = 'denormalized') the image is
the network's normalised input de-normalised back to uint8 by truncation, as theirs.
`run_crf` pulls its items on a background thread through a bounded queue and hands them to a
process pool, so a device-fed item generator (seed inference) keeps running while the CPU cores do
the CRF.
"""

import concurrent.futures as cf
import multiprocessing
import os
import time

import numpy as np
import pydensecrf.densecrf as dcrf
import tqdm

from recurseed_jax import io_utils

CRF_KEYS = ('iterations', 'bi_weight', 'bi_xy_std', 'bi_rgb_std', 'pos_weight', 'pos_xy_std')
IMAGE_MODES = ('decoded', 'denormalized')
UNARY_CLIP = 1e-5  # pydensecrf.utils.unary_from_softmax's default, which the authors use


def crf_params_from_config(crf_config):
  """The `dense_crf` keyword arguments from `config.crf` (a ConfigDict or a dict)."""
  params = {k: float(crf_config[k]) for k in CRF_KEYS}
  params['iterations'] = int(params['iterations'])
  return params


def crf_image(image, mode='decoded', mean=None, std=None):
  """The uint8 [H, W, 3] image the CRF's bilateral kernel compares (config.crf.image).

  'decoded': the image as read. 'denormalized': the authors' — the network's float32 input
  (x / 255 - mean) / std, de-normalised in float64 as (x_n * std + mean) * 255 and truncated to
  uint8, which leaves most pixels one grey level darker.
  """
  image = np.asarray(image)
  if mode == 'decoded':
    return image
  if mode != 'denormalized':
    raise ValueError(f'config.crf.image must be one of {IMAGE_MODES}, got {mode!r}')
  if mean is None or std is None:
    raise ValueError("crf_image('denormalized') needs the data mean and std")
  x = image.astype(np.float32)
  mean32, std32 = np.asarray(mean, np.float32), np.asarray(std, np.float32)
  normalised = (x / np.float32(255.0) - mean32) / std32
  back = (normalised.astype(np.float64) * np.asarray(std, np.float64) +
          np.asarray(mean, np.float64)) * 255.0
  return np.clip(back, 0, 255).astype(np.uint8)  # truncation toward zero, as astype(uint8)


def dense_crf(image, probs, *, iterations=10, bi_weight=4, bi_xy_std=67, bi_rgb_std=3,
              pos_weight=3, pos_xy_std=1):
  """Fully connected CRF (Krahenbuhl & Koltun) with unary -log(clip(prob, 1e-5, 1)).

  Args:
    image: uint8 [H, W, 3] RGB image.
    probs: float [H, W, L] non-negative scores per label, taken as they are (adding a constant
      to every label's unary of a pixel changes nothing; only the clip at 1e-5 sees the scale).
    iterations: mean-field iterations.
    bi_weight, bi_xy_std, bi_rgb_std: bilateral (appearance) kernel weight and stds.
    pos_weight, pos_xy_std: Gaussian (smoothness) kernel weight and std.

  Returns:
    float32 [H, W, L] refined marginals.
  """
  image = np.asarray(image)
  probs = np.asarray(probs, dtype=np.float32)
  if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
    raise ValueError(f'image must be uint8 [H, W, 3], got {image.dtype} {image.shape}')
  if probs.ndim != 3 or probs.shape[:2] != image.shape[:2]:
    raise ValueError(f'probs must be [H, W, L] matching image {image.shape[:2]}, got {probs.shape}')
  h, w, num_labels = probs.shape
  if not np.all(np.isfinite(probs)):
    raise ValueError('probs contain NaN or inf')
  # An all-zero pixel clips to a uniform unary: finite, never 0/0.
  p = np.clip(probs, UNARY_CLIP, 1.0)
  unary = np.ascontiguousarray(-np.log(p).transpose(2, 0, 1).reshape(num_labels, -1))

  d = dcrf.DenseCRF2D(w, h, num_labels)
  d.setUnaryEnergy(unary)
  d.addPairwiseGaussian(sxy=float(pos_xy_std), compat=float(pos_weight))
  d.addPairwiseBilateral(sxy=float(bi_xy_std), srgb=float(bi_rgb_std),
                         rgbim=np.ascontiguousarray(image), compat=float(bi_weight))
  q = np.asarray(d.inference(int(iterations)), dtype=np.float32)
  return q.reshape(num_labels, h, w).transpose(1, 2, 0)


def crf_label_map(image, probs, labels, **crf_params):
  """CRF over an image's kept labels; returns a uint8 [H, W] map in dataset label space.

  Args:
    image: uint8 [H, W, 3].
    probs: float [H, W, L]; channel i scores the dataset label labels[i].
    labels: L label ids (0 = background, c + 1 = class c), e.g. [0] + the kept classes + 1.
    **crf_params: forwarded to `dense_crf`.

  With fewer than two labels there is nothing to decide: all background (the authors' rule).
  """
  labels = np.asarray(labels, dtype=np.int64).reshape(-1)
  probs = np.asarray(probs)
  if probs.ndim != 3 or probs.shape[2] != labels.size:
    raise ValueError(f'probs must be [H, W, L] with L = {labels.size} labels, got {probs.shape}')
  if labels.size and (labels.min() < 0 or labels.max() > 254):
    raise ValueError(f'labels must lie in 0..254, got {labels.tolist()}')
  if labels.size < 2:
    return np.zeros(probs.shape[:2], np.uint8)
  q = dense_crf(image, probs, **crf_params)
  return labels.astype(np.uint8)[np.argmax(q, axis=2)]


def _crf_job(path, image, probs, labels, params, label_fn):
  """Worker body: one image, written atomically (module level so 'spawn' can pickle it)."""
  io_utils.save_palette_png(path, (label_fn or crf_label_map)(image, probs, labels, **params))


def run_crf(items, out_dir, *, params, workers=2, queue_size=8, desc='crf', total=None,
            label_fn=None):
  """Runs `crf_label_map` over a stream of seeds and writes `<out_dir>/<image_id>.png`.

  `items` is iterated on a background thread at most `queue_size` items ahead, so when it is a
  generator running seed inference the device goes on while the pool works; a 'spawn' process
  pool (safe beside jax/tf threads in the parent) holds at most 2 * workers items. Resumable: an
  image whose PNG exists is skipped (its item is still consumed); every PNG is written to a temp
  name and renamed. Temp files already in `out_dir` are left alone: in a multi-process run the
  other processes write their shares of the images into the same folder, and a process that
  reached this stage later would delete their temp files between write and rename. A killed
  run's temp files are swept once, by launch.py, before any stage runs (process 0, holding the
  workdir lock, ahead of the other processes' barrier).

  Args:
    items: iterable of (image_id, image uint8 [H, W, 3], probs float [H, W, L], labels [L]).
    out_dir: output folder, created if missing.
    params: `dense_crf` keyword arguments (see `crf_params_from_config`).
    workers: pool size; 0 runs inline in this process.
    queue_size: items the producer thread may run ahead of the pool.
    desc: progress bar label.
    total: item count for the progress bar (defaults to len(items) when it has one).
    label_fn: another `(image, array, vector, **params) -> uint8 [H, W]` function to run in the
      pool instead of crf_label_map (a module-level function, so the pool can pickle it), e.g.
      relation_labels.relation_label_map.

  Returns:
    {'written': n, 'skipped': n, 'seconds': s}.
  """
  start = time.perf_counter()
  os.makedirs(out_dir, exist_ok=True)
  if total is None and hasattr(items, '__len__'):
    total = len(items)
  params = dict(params)
  counts = {'written': 0, 'skipped': 0}
  pool = None
  pending = {}  # future -> image_id
  max_in_flight = 2 * max(workers, 1)
  bar = tqdm.tqdm(total=total, desc=desc, unit='img', dynamic_ncols=True)
  feed = io_utils.background_iter(items, queue_size)

  def failed(image_id, exc):
    if isinstance(exc, OSError):  # a full disk: an OSError naming the file (launch: one line)
      return OSError(exc.errno, exc.strerror or str(exc), exc.filename)
    return RuntimeError(f'CRF failed for image {image_id!r}: {exc!r}')

  def collect(done):
    for fut in done:
      image_id = pending.pop(fut)
      exc = fut.exception()
      if exc is not None:
        raise failed(image_id, exc) from exc
      counts['written'] += 1
      bar.update(1)

  try:
    for image_id, image, probs, labels in feed:
      path = os.path.join(out_dir, f'{image_id}.png')
      if os.path.exists(path):
        counts['skipped'] += 1
        bar.update(1)
        continue
      if workers <= 0:
        try:
          _crf_job(path, image, probs, labels, params, label_fn)
        except Exception as exc:
          raise failed(image_id, exc) from exc
        counts['written'] += 1
        bar.update(1)
        continue
      if pool is None:  # lazily: a fully resumed run never starts processes
        pool = cf.ProcessPoolExecutor(max_workers=workers,
                                      mp_context=multiprocessing.get_context('spawn'))
      while len(pending) >= max_in_flight:
        done, _ = cf.wait(list(pending), return_when=cf.FIRST_COMPLETED)
        collect(done)
      pending[pool.submit(_crf_job, path, image, probs, labels, params, label_fn)] = image_id
    while pending:
      done, _ = cf.wait(list(pending), return_when=cf.FIRST_COMPLETED)
      collect(done)
  finally:
    feed.close()  # stops the producer thread (and closes its generator) on errors
    if pool is not None:
      pool.shutdown(wait=True, cancel_futures=True)
    bar.close()
  return {**counts, 'seconds': time.perf_counter() - start}
