"""Random-walk propagation of seeds over boundary affinities, and IRN's label map from it.

Reproduces IRN's inference (Ahn, Cho & Kwak, CVPR 2019; jiwoon-ahn/irn): misc/indexing.py's
`propagate_to_edge` and the post-processing of step/make_sem_seg_labels.py, which the RS+EPM
authors used for their multi-stage pseudo masks (METHOD.md section 5).

propagate_to_edge, for one image with stride-4 seed x [C, h, w] and boundary map e [h, w]:
  - pairs: pixels p, q = p + d for the search directions d of radius r = 5 (affinity.py); their
    affinity a_pq = a_qp = 1 - max of e on the straight path from p to q (both ends included),
    plus a_pp = 1. IRN builds this on e padded with 1 (left, right, bottom by r) and then crops
    the padded vertices away: a pair of image pixels has its whole path inside the image, so the
    padding only decides which pairs exist, i.e. exactly the pairs of image pixels.
  - T = column-normalised a^beta (T_pq = a_pq^beta / sum_p' a_p'q^beta), squared exp_times
    times: T^(2^exp_times);
  - rw = (x * (1 - e)) @ T^(2^exp_times), over the flattened pixels.
Since a is symmetric, one multiplication by T is a normalised weighted average over the
neighbourhood: y_q = sum_p a_pq^beta y_p / sum_p a_pq^beta. `propagate` applies that local
stencil 2^exp_times times (a lax.fori_loop over shifted slices; memory O(h w), time
O(2^exp_times * 69 * h w C) at radius 5), never forming the [hw, hw] matrix; `propagate_dense`
builds T and squares it (memory O((hw)^2), time O(exp_times (hw)^3)), for tests and benches.
The two agree up to float32 rounding (a matrix power computed in another order); `propagate`
keeps every column's sum at 1 up to one rounding (`_transition_stencil`), so its 256 float32
steps stay within ~1e-5 (relative to the largest value) of IRN's computation in float64.

Differences from IRN: `valid_hw` (images padded to a static bucket) removes the padded pixels
from the graph, which gives IRN's result on the valid region for any padding; IRN has no
padding. In `sem_seg_labels` a map that is zero everywhere gives background where IRN divides
0 by 0.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from recurseed_jax.method import affinity
from recurseed_jax.method.seeds import resize

_HIGHEST = jax.lax.Precision.HIGHEST
STRIDE = 4  # the boundary map's and the strided seed's stride (IRN's)


def _offsets(radius):
  """Stencil offsets: self, every search direction, then every reversed direction."""
  dirs = [d for d, _ in affinity.search_paths(radius)]
  return [(0, 0)] + dirs + [(-dy, -dx) for dy, dx in dirs]


def _neighbours(x, offsets):
  """[x[..., i + dy, j + dx] for each offset] over the last two axes, 0 outside; one pad."""
  h, w = x.shape[-2:]
  p = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
  xp = jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(p, p), (p, p)])
  return [xp[..., p + dy:p + dy + h, p + dx:p + dx + w] for dy, dx in offsets]


def _shifted(x, offsets, fill):
  """out[:, i, j, k] = x[:, i + dy_k, j + dx_k] (or x[..., k] for a stack), `fill` outside.

  One gather for all offsets (a small program where per-offset slices compile slowly).
  """
  h, w = x.shape[1:3]
  off = np.asarray(offsets, np.int32).reshape(-1, 2)
  p = int(np.abs(off).max())
  pad = [(0, 0), (p, p), (p, p)] + [(0, 0)] * (x.ndim - 3)
  xp = jnp.pad(x, pad, constant_values=fill)
  rows = p + np.arange(h, dtype=np.int32)[:, None, None] + off[:, 0]  # [h, 1, K]
  cols = p + np.arange(w, dtype=np.int32)[None, :, None] + off[:, 1]  # [1, w, K]
  if x.ndim == 3:
    return xp[:, rows, cols]
  return xp[:, rows, cols, np.arange(len(off), dtype=np.int32)]


def _valid_mask(shape, valid_hw):
  """[B, h, w] bool: inside each map's valid (top-left) rectangle."""
  b, h, w = shape
  if valid_hw is None:
    return jnp.ones((b, h, w), bool)
  valid_hw = jnp.asarray(valid_hw, jnp.int32)
  if valid_hw.shape != (b, 2):
    raise ValueError(f'valid_hw must be [B, 2] = {(b, 2)}, got {valid_hw.shape}')
  rows = jnp.arange(h)[None, :, None] < valid_hw[:, 0, None, None]
  cols = jnp.arange(w)[None, None, :] < valid_hw[:, 1, None, None]
  return rows & cols


def _check(seed, edge, beta, exp_times):
  seed = jnp.asarray(seed, jnp.float32)
  edge = jnp.asarray(edge, jnp.float32)
  if seed.ndim != 4:
    raise ValueError(f'seed must be [B, h, w, C], got shape {seed.shape}')
  if edge.shape != seed.shape[:3]:
    raise ValueError(f"edge must be [B, h, w] = {seed.shape[:3]} (the seed's), got {edge.shape}")
  if int(exp_times) != exp_times or exp_times < 0:
    raise ValueError(f'exp_times must be a non-negative integer, got {exp_times!r}')
  if not np.isfinite(float(beta)):
    raise ValueError(f'beta must be finite, got {beta!r}')
  return seed, edge


def path_weights(edge, *, beta=10.0, radius=5, valid_hw=None):
  """Per-pixel stencil weights a^beta towards each offset of the propagation neighbourhood.

  Args:
    edge: [B, h, w] boundary probabilities.
    beta: affinity exponent.
    radius: pair radius.
    valid_hw: optional int [B, 2] valid (rows, columns) of each map; others are no vertices.

  Returns:
    (weights [B, h, w, K] float32, offsets: K (dy, dx) pairs, the self offset first);
    weights[b, i, j, k] = a((i, j), (i, j) + offsets[k])^beta, 0 where that pixel is no vertex.
  """
  edge = jnp.asarray(edge, jnp.float32)
  valid = _valid_mask(edge.shape, valid_hw)
  # Padding with 1 (IRN's value) only reaches pairs with an end outside, which are masked.
  paths = affinity.search_paths(radius)
  pad = radius - 1
  ep = jnp.pad(edge, ((0, 0), (0, pad), (pad, pad)), constant_values=1.0)
  h, w = edge.shape[1:]
  dirs = [d for d, _ in paths]
  worst = affinity.path_max(ep, radius, (0, pad), (h, w))  # [B, h, w, D]
  ok = valid[..., None] & _shifted(valid, dirs, False)
  forward = jnp.where(ok, (1.0 - worst) ** beta, 0.0)  # [B, h, w, D]
  # The reversed pair (p - d, p) has the weight computed at p - d.
  backward = _shifted(forward, [(-dy, -dx) for dy, dx in dirs], 0.0)
  weights = jnp.concatenate([valid[..., None].astype(jnp.float32), forward, backward], axis=-1)
  return weights, _offsets(radius)


def _tree_sum(terms):
  """Pairwise sum: float32 rounding grows with log2(len(terms)), not len(terms)."""
  terms = list(terms)
  while len(terms) > 1:
    terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i]
             for i in range(0, len(terms), 2)]
  return terms[0]


def _transition_stencil(edge, beta, radius, valid_hw):
  """T's columns as stencils: weights over their neighbourhood sum, [B, h, w, K].

  A column summing to 1 + e scales the walk by 1 + e at every one of its 2**exp_times steps,
  so float32 rounding would add up to ~1e-4 of drift: the self weight is set to 1 - (the sum
  of the others), which leaves one rounding. Off the vertices the self weight is 1 (on zeros).
  """
  weights, offsets = path_weights(edge, beta=beta, radius=radius, valid_hw=valid_hw)
  total = _tree_sum(weights[..., k] for k in range(weights.shape[-1]))[..., None]
  trans = weights / jnp.where(total > 0, total, 1.0)
  others = _tree_sum(trans[..., k] for k in range(1, trans.shape[-1]))
  return trans.at[..., 0].set(1.0 - others), offsets


@functools.partial(jax.jit, static_argnames=('beta', 'exp_times', 'radius'))
def propagate(seed, edge, *, beta=10.0, exp_times=8, radius=5, valid_hw=None):
  """IRN's propagate_to_edge as a local operator (see the module docstring).

  Args:
    seed: [B, h, w, C] float32 foreground scores at stride 4 (IRN: the kept classes' CAMs).
    edge: [B, h, w] boundary probabilities at stride 4.
    beta: affinity exponent (IRN's 10).
    exp_times: the walk takes 2**exp_times steps (IRN's 8).
    radius: pair radius (IRN's 5 at inference).
    valid_hw: optional int [B, 2] valid (rows, columns) of maps padded to a common size;
      outside, the result is 0.

  Returns:
    [B, h, w, C] float32 propagated scores.
  """
  seed, edge = _check(seed, edge, beta, exp_times)
  trans, offsets = _transition_stencil(edge, beta, radius, valid_hw)
  # The walk runs channels-first, rows of pixels contiguous (3x faster on CPU than NHWC with
  # a handful of channels): y [B, C, h, w], one weight map [B, 1, h, w] per offset.
  trans = jnp.moveaxis(trans, -1, 0)[:, :, None]
  x = seed * (1.0 - edge)[..., None] * _valid_mask(edge.shape, valid_hw)[..., None]

  def step(_, y):
    return _tree_sum(t * n for t, n in zip(trans, _neighbours(y, offsets)))

  y = jax.lax.fori_loop(0, 2 ** int(exp_times), step, jnp.moveaxis(x, -1, 1))
  return jnp.moveaxis(y, 1, -1)


def _dense_transition(weights, offsets):
  """[hw, hw] column-normalised a^beta of one map from its stencil weights [h, w, K]."""
  h, w, _ = weights.shape
  ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
  rows, cols, vals = [], [], []
  for k, (dy, dx) in enumerate(offsets):
    ok = (ii + dy >= 0) & (ii + dy < h) & (jj + dx >= 0) & (jj + dx < w)
    centre = np.flatnonzero(ok)
    rows.append(((ii + dy) * w + jj + dx).ravel()[centre])  # T[p, q]: p neighbour, q centre
    cols.append(centre)
    vals.append(weights[..., k].reshape(-1)[centre])
  a = jnp.zeros((h * w, h * w), jnp.float32)
  a = a.at[np.concatenate(rows), np.concatenate(cols)].add(jnp.concatenate(vals))
  total = jnp.sum(a, axis=0, keepdims=True)
  return a / jnp.where(total > 0, total, 1.0)


@functools.partial(jax.jit, static_argnames=('beta', 'exp_times', 'radius'))
def propagate_dense(seed, edge, *, beta=10.0, exp_times=8, radius=5):
  """The same walk as `propagate` (without valid_hw) with IRN's dense [hw, hw] transition
  matrix, squared.

  Memory grows as (h w)^2 and time as (h w)^3: a reference for tests and benches.
  """
  seed, edge = _check(seed, edge, beta, exp_times)
  weights, offsets = path_weights(edge, beta=beta, radius=radius)
  _, h, w, c = seed.shape

  def one(weights_1, x_1):
    t = _dense_transition(weights_1, offsets)
    for _ in range(int(exp_times)):
      t = jnp.matmul(t, t, precision=_HIGHEST)
    return jnp.matmul(x_1.reshape(h * w, c).T, t, precision=_HIGHEST).T.reshape(h, w, c)

  return jax.vmap(one)(weights, seed * (1.0 - edge)[..., None])


def _extend_edges(x, valid_hw):
  """Rows / columns past each map's valid size replaced by its last valid row / column."""
  h, w = x.shape[1:3]
  valid_hw = jnp.asarray(valid_hw, jnp.int32)
  rows = jnp.minimum(jnp.arange(h)[None, :], valid_hw[:, :1] - 1)  # [B, h]
  cols = jnp.minimum(jnp.arange(w)[None, :], valid_hw[:, 1:] - 1)  # [B, w]
  x = jnp.take_along_axis(x, rows[:, :, None, None], axis=1)
  return jnp.take_along_axis(x, cols[:, None, :, None], axis=2)


def sem_seg_scores(rw, classes, image_size, *, bg=0.25, valid_hw=None):
  """IRN's make_sem_seg_labels scores: [B, H, W, 1 + K] (a constant `bg` first, then each kept
  class upsampled x4 and divided by the image's global max; unused channels -inf) and the label
  lut [B, 1 + K] (0, then class + 1) of the channels. See `sem_seg_labels`."""
  rw = jnp.asarray(rw, jnp.float32)
  b, h, w, k = rw.shape
  hh, ww = (int(s) for s in image_size)
  if hh > STRIDE * h or ww > STRIDE * w:
    raise ValueError(f'image_size {(hh, ww)} exceeds {STRIDE} x the map size {(h, w)}')
  classes = jnp.asarray(classes, jnp.int32)
  if classes.shape != (b, k):
    raise ValueError(f'classes must be [B, K] = {(b, k)}, got {classes.shape}')
  if valid_hw is None:
    valid_hw = jnp.tile(jnp.array([[hh, ww]], jnp.int32), (b, 1))
  valid_hw = jnp.asarray(valid_hw, jnp.int32)
  if valid_hw.shape != (b, 2):
    raise ValueError(f'valid_hw must be [B, 2] = {(b, 2)}, got {valid_hw.shape}')
  # Replicating the last valid cell reproduces the clamped border of IRN's unpadded upsampling.
  cells = (valid_hw + STRIDE - 1) // STRIDE
  up = resize(_extend_edges(rw, cells), (STRIDE * h, STRIDE * w))[:, :hh, :ww]
  inside = _valid_mask((b, hh, ww), valid_hw)
  used = classes >= 0
  top = jnp.max(jnp.where(inside[..., None] & used[:, None, None, :], up, 0.0), axis=(1, 2, 3))
  up = up / jnp.where(top > 0, top, 1.0)[:, None, None, None]
  up = jnp.where(used[:, None, None, :], up, -jnp.inf)
  scores = jnp.concatenate([jnp.full((b, hh, ww, 1), bg, jnp.float32), up], axis=-1)
  lut = jnp.concatenate([jnp.zeros((b, 1), jnp.int32), classes + 1], axis=1)
  return scores, lut


@functools.partial(jax.jit, static_argnames=('image_size', 'bg'))
def sem_seg_labels(rw, classes, image_size, *, bg=0.25, valid_hw=None):
  """IRN's make_sem_seg_labels post-processing: random-walk scores -> label map.

  Per image: upsample x4 (bilinear, half-pixel: torch's align_corners=False), crop to the
  image, divide by the global max over pixels and kept classes, put a constant `bg` background
  channel first, argmax, map channel k to its class + 1 (0 = background).

  Args:
    rw: [B, h, w, K] `propagate` output of the K kept classes.
    classes: int [B, K] 0-based class index of each channel; negative = an unused channel
      (images with fewer kept classes than K).
    image_size: static (H, W) tuple, the output size; needs 4h >= H and 4w >= W.
    bg: the background score (IRN's sem_seg_bg_thres, 0.25).
    valid_hw: optional int [B, 2] image size of each image padded to `image_size`; its maps
      must then be valid on the first ceil(H_b / 4) x ceil(W_b / 4) cells. Outside: label 0.

  Returns:
    uint8 [B, H, W] label map in dataset label space.
  """
  scores, lut = sem_seg_scores(rw, classes, image_size, bg=bg, valid_hw=valid_hw)
  b, hh, ww = scores.shape[:3]
  if valid_hw is None:
    valid_hw = jnp.tile(jnp.array([[hh, ww]], jnp.int32), (b, 1))
  best = jnp.argmax(scores, axis=-1).reshape(b, hh * ww)
  labels = jnp.take_along_axis(lut, best, axis=1).reshape(b, hh, ww)
  return jnp.where(_valid_mask((b, hh, ww), valid_hw), labels, 0).astype(jnp.uint8)
