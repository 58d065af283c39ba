"""Shared by the tests: slow numpy references, config overrides, a fake training batch and
XLA's FLOP count of a compiled program."""

import math

import numpy as np

from configs import default

# XLA compile options for full-size networks: ~2x faster compiles, the same numbers.
FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


def np_resize(x, size):
  """Bilinear, align_corners=False, no antialias (torch F.interpolate). x [B,H,W,C]."""
  b, h, w, c = x.shape
  hh, ww = size
  if (hh, ww) == (h, w):
    return x.astype(np.float64)
  out = np.zeros((b, hh, ww, c), np.float64)

  def src(i, n_in, n_out):
    s = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
    i0 = min(int(math.floor(s)), n_in - 1)
    return i0, min(i0 + 1, n_in - 1), s - i0

  for y in range(hh):
    y0, y1, ly = src(y, h, hh)
    for xx in range(ww):
      x0, x1, lx = src(xx, w, ww)
      out[:, y, xx] = ((1 - ly) * (1 - lx) * x[:, y0, x0] + (1 - ly) * lx * x[:, y0, x1] +
                       ly * (1 - lx) * x[:, y1, x0] + ly * lx * x[:, y1, x1])
  return out


def override(cfg, overrides):
  """Sets dotted keys ('rs.certain': 0.6) on an ml_collections config; returns it."""
  for key, value in overrides.items():
    node = cfg
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return cfg


def compiled_flops(compiled):
  """XLA's FLOPs of a compiled program, after its optimisations (dead code dropped)."""
  cost = compiled.cost_analysis()
  return float((cost[0] if isinstance(cost, (list, tuple)) else cost)['flops'])


def default_config(**overrides):
  return override(default.get_config(), overrides)


def fake_batch(seed, batch, crop, num_classes):
  """A training batch of 1-2 square objects per image, labels from the mask, the last 5 columns
  invalid (crop padding, mask 255); different objects per image, so mixing moves things."""
  rng = np.random.default_rng(seed)
  image = rng.normal(size=(batch, crop, crop, 3)).astype(np.float32)
  mask = np.zeros((batch, crop, crop), np.int32)
  label = np.zeros((batch, num_classes), np.float32)
  for i in range(batch):
    for c in rng.choice(num_classes, size=1 + i % 2, replace=False):
      y, x = rng.integers(0, crop - 12, 2)
      mask[i, y:y + 12, x:x + 12] = c + 1
      label[i, c] = 1.0
    image[i][mask[i] > 0] += 1.5 * mask[i][mask[i] > 0, None] / num_classes
  valid = np.ones(mask.shape, bool)
  valid[:, :, -5:] = False
  mask[~valid] = 255
  return dict(image=image, mask=mask, valid=valid, label=label)
