"""Random-walk pseudo masks of a batch (IRN's make_sem_seg_labels), as one jitted step.

For images padded bottom/right to a square of `size` (IRN pads each image to its 512 crop),
each with its valid size, and their stored seeds:
- boundary: the boundary network on the normalised image and on its mirror, each zero past the
  image in normalised space (IRN pads the normalised tensor with zeros), logits cut to the
  image's ceil(h / 4) x ceil(w / 4) cells, the mirror's mirrored back, then
  sigmoid(logits / 2 + mirrored logits / 2) (IRN's EdgeDisplacement, the authors' get_edge);
- the seed at stride 4: each 4 x 4 cell's mean over the image's pixels (our reconstruction: the
  authors' seeds are at image resolution, IRN's strided CAMs at stride 4), each class divided by
  its max + 1e-5 as IRN's strided CAMs are;
- method.random_walk.propagate over the image's cells, then IRN's post-processing
  (sem_seg_labels): x4 bilinear, divided by the image's max, background `bg`, argmax.
Padding never reaches an image's result (the walk and the upsampling see the valid cells only;
the boundary network sees the zeros IRN's padding gives it).
"""

import jax
import jax.numpy as jnp
import numpy as np

from recurseed_jax.method import random_walk

STRIDE = random_walk.STRIDE


def _mirror(x, width):
  """Each map of x [B, H, W, ...] mirrored within its first `width` [B] columns."""
  cols = jnp.arange(x.shape[2])[None, :]
  src = jnp.where(cols < width[:, None], width[:, None] - 1 - cols, cols)  # [B, W]
  src = src.reshape((x.shape[0], 1, x.shape[2]) + (1,) * (x.ndim - 3))
  return jnp.take_along_axis(x, src, axis=2)


def _inside(valid_hw, size):
  rows = jnp.arange(size[0])[None, :, None] < valid_hw[:, :1, None]
  cols = jnp.arange(size[1])[None, None, :] < valid_hw[:, 1:, None]
  return rows & cols


def strided_seed(seed, valid_hw, eps=1e-5):
  """[B, S, S, K] image-resolution seeds -> [B, S/4, S/4, K]: cell means over valid pixels,
  each class divided by its max over the image's cells + eps."""
  b, h, w, k = seed.shape
  inside = _inside(valid_hw, (h, w)).astype(jnp.float32)[..., None]
  cell = lambda x: x.reshape(b, h // STRIDE, STRIDE, w // STRIDE, STRIDE, -1).sum(axis=(2, 4))
  means = cell(seed * inside) / jnp.maximum(cell(inside), 1.0)
  return means / (jnp.max(means, axis=(1, 2), keepdims=True) + eps)


def boundary(model, variables, images, valid_hw, mean, std):
  """[B, S/4, S/4] boundary probabilities of uint8 images [B, S, S, 3] (zero past each image's
  cells); see the module docstring."""
  b, h, w, _ = images.shape
  x = (images.astype(jnp.float32) / 255.0 - mean) / std
  inside = _inside(valid_hw, (h, w))[..., None]
  x = jnp.where(inside, x, 0.0)
  logits = model.apply(variables, jnp.concatenate([x, _mirror(x, valid_hw[:, 1])]))
  cells = -(-valid_hw // STRIDE)
  mirrored = _mirror(logits[b:], cells[:, 1])
  edge = jax.nn.sigmoid(logits[:b] / 2 + mirrored / 2)
  return jnp.where(_inside(cells, edge.shape[1:]), edge, 0.0)


def make_walk_step(model, mean, std, *, beta=10.0, exp_times=8, radius=5, bg=0.25,
                   with_scores=False):
  """Returns jitted `step(variables, images, valid_hw, seeds, classes) -> dict`.

  images: uint8 [B, S, S, 3] padded (S a multiple of 16); valid_hw: int [B, 2]; seeds: float
  [B, S, S, K] the stored seeds of the kept classes, padded; classes: int [B, K] their 0-based
  indices (-1: unused). Returns `labels` uint8 [B, S, S] (0 past each image) and, with
  with_scores, `scores` float32 [B, S, S, 1 + K] (the background, then each class's normalised
  walk: what a CRF after the walk takes) and `lut` int32 [B, 1 + K] their labels.
  """
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)

  @jax.jit
  def step(variables, images, valid_hw, seeds, classes):
    valid_hw = jnp.asarray(valid_hw, jnp.int32)
    size = images.shape[1:3]
    edge = boundary(model, variables, images, valid_hw, mean, std)
    cells = -(-valid_hw // STRIDE)
    rw = random_walk.propagate(strided_seed(seeds.astype(jnp.float32), valid_hw), edge,
                               beta=beta, exp_times=exp_times, radius=radius, valid_hw=cells)
    labels = random_walk.sem_seg_labels(rw, classes, size, bg=bg, valid_hw=valid_hw)
    out = dict(labels=labels)
    if with_scores:
      out['scores'], out['lut'] = random_walk.sem_seg_scores(rw, classes, size, bg=bg,
                                                             valid_hw=valid_hw)
    return out

  return step
