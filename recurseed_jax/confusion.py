"""Confusion matrices and the scores of the WSSS literature (mIoU, FP and FN rates).

The one place both training (the training seed's mIoU, logged) and evaluation (every product's
tables) count and score label maps. Labels are 0 background, 1..C classes; 255 is ignored.
"""

import math

import jax.numpy as jnp
import numpy as np

from recurseed_jax.method import certainty

IGNORE = 255


def confusion_matrix(pred, gt, num_labels, ignore=IGNORE):
  """int64 [n, n] counts, rows = ground truth, columns = prediction; gt == ignore is skipped."""
  pred = np.asarray(pred)
  gt = np.asarray(gt)
  if pred.shape != gt.shape:
    raise ValueError(f'prediction shape {pred.shape} != ground truth shape {gt.shape}')
  valid = gt != ignore
  p = pred[valid].astype(np.int64)
  g = gt[valid].astype(np.int64)
  if p.size and (p.min() < 0 or p.max() >= num_labels):
    raise ValueError(f'prediction labels must lie in [0, {num_labels}), got '
                     f'{sorted(set(np.unique(p[(p < 0) | (p >= num_labels)]).tolist()))}')
  if g.size and (g.min() < 0 or g.max() >= num_labels):
    raise ValueError(f'ground-truth labels must lie in [0, {num_labels}) or be {ignore}, got '
                     f'{sorted(set(np.unique(g[(g < 0) | (g >= num_labels)]).tolist()))}')
  counts = np.bincount(g * num_labels + p, minlength=num_labels * num_labels)
  return counts.reshape(num_labels, num_labels).astype(np.int64)


def _nan_mean(x):
  x = np.asarray(x, np.float64)
  return float(np.nanmean(x)) if np.any(~np.isnan(x)) else math.nan


def scores(conf):
  """mIoU and per-class IoU / FP / FN rates from a confusion matrix.

  A class absent from both gt and prediction has IoU, FP and FN NaN and is left out of the means.
  FP and FN are normalised by the class's union (tp + fp + fn), so IoU + FP + FN = 1 per class.
  """
  conf = np.asarray(conf, dtype=np.float64)
  tp = np.diag(conf)
  fp = conf.sum(axis=0) - tp
  fn = conf.sum(axis=1) - tp
  union = tp + fp + fn
  with np.errstate(invalid='ignore', divide='ignore'):
    iou = np.where(union > 0, tp / union, np.nan)
    fp_rate = np.where(union > 0, fp / union, np.nan)
    fn_rate = np.where(union > 0, fn / union, np.nan)
  total = conf.sum()
  return {
      'miou': _nan_mean(iou),
      'iou': iou.tolist(),
      'pixel_acc': float(tp.sum() / total) if total else math.nan,
      'fp': fp_rate.tolist(),
      'fn': fn_rate.tolist(),
      'mean_fp': _nan_mean(fp_rate),
      'mean_fn': _nan_mean(fn_rate),
  }


def seed_confusion(truth, seed, valid, num_classes):
  """jnp [C+1, C+1] counts of (true label, argmax label of the soft seed) over valid pixels.

  seed: [B,H,W,C] foreground scores; its label map is method.argmax_labels (background where no
  class beats 1 - max). Pixels that are padding or 255 in the truth are not counted. Traceable:
  the training step sums it over steps (TrainState.seed_window).
  """
  k = num_classes + 1
  pred = certainty.argmax_labels(seed, valid=valid)
  ok = (truth != IGNORE) & (pred != IGNORE)
  index = jnp.where(ok, jnp.clip(truth, 0, k - 1) * k + jnp.clip(pred, 0, k - 1), 0)
  counts = jnp.zeros((k * k,), jnp.float32).at[index.reshape(-1)].add(ok.reshape(-1))
  return counts.reshape(k, k)
