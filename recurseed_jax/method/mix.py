"""CertainMix / ClassMix / EdgePredictMix batch mixing (METHOD.md section 3).

Image i of the batch receives pixels of image j = perm[i]: those whose hard
label is one of a random subset of j's classes. CertainMix and ClassMix differ
only in the hard map the caller passes (certainty-filtered vs argmax), so one
function serves all kinds. Background and ignored pixels are never pasted.

EdgePredictMix is our reconstruction: the authors describe it in one sentence
(the mask boundary follows large probability differences between adjacent
pixels, a band around it is ignored) and never released it. Every choice below
is a config field (mix.edge_threshold, mix.edge_band, mix.edge_distance). Definition:

- The caller passes hard = argmax_labels(seed) (as for ClassMix) plus the soft
  seed. P = concat([1 - max_c seed, seed]) (background first), the
  probabilities argmax_labels argmaxes over. Class choice and the paste mask M
  are ClassMix's, so the paste boundary is where j's argmax label changes.
- Edge strength of j: E_j(x) = max over the C + 1 channels and over the
  pixels n at distance d (edge_distance) above, below, left and right of x
  inside the image of |P_j(x) - P_j(n)|; x is an edge pixel when
  E_j(x) >= edge_threshold. The train step takes d = rs.refine_stride: the seed
  is refined at 1/d of the crop and upsampled, so neighbouring crop pixels
  differ by about 1/d of a jump and d = 1 would find no edge at all.
- Boundary band (r = edge_band): pixels whose (2r + 1)^2 window, clipped to the
  image, holds pixels both in and out of M, i.e. dilate_r(M) & ~erode_r(M):
  pixels within Chebyshev distance r of a pixel on the other side of the paste
  boundary. r = 0 gives no band (the output is then exactly ClassMix's).
- Ignored: boundary-band pixels that also have an edge pixel of j within
  Chebyshev distance r (dilate_r(edge)). There j's probabilities change
  sharply, so the argmax boundary is an unreliable object edge and the pasted
  labels near it are not trained on: mixed_hard is set to 255 there.
- Mixed image labels are computed on the mixed hard map before the band is
  ignored: the band only hides pixels from the segmentation loss, it never
  removes an image label.
"""

import jax
import jax.numpy as jnp

from recurseed_jax.method.certainty import IGNORE

MIX_KINDS = ('certainmix', 'classmix', 'edgepredictmix', 'none')


def _class_areas(hard, num_classes):
  """[B, H, W] hard map -> [B, C] pixel count per foreground class."""
  # one_hot maps out-of-range labels (255) to all-zero rows.
  onehot = jax.nn.one_hot(hard, num_classes + 1, dtype=jnp.float32)
  return jnp.sum(onehot[..., 1:], axis=(1, 2))


def seed_probs(seed):
  """[B, H, W, C] soft seed -> [B, H, W, C + 1] probabilities, background first."""
  seed = seed.astype(jnp.float32)
  bg = 1.0 - jnp.max(seed, axis=-1, keepdims=True)
  return jnp.concatenate([bg, seed], axis=-1)


def edge_strength(probs, distance=1):
  """[B, H, W, K] -> [B, H, W]: max over channels and the in-image pixels `distance` away along
  each axis (both directions) of |p(x) - p(n)|."""
  d = int(distance)
  dh = jnp.max(jnp.abs(probs[:, d:] - probs[:, :-d]), axis=-1)  # [B, H - d, W]
  dw = jnp.max(jnp.abs(probs[:, :, d:] - probs[:, :, :-d]), axis=-1)  # [B, H, W - d]
  # A difference belongs to both pixels of its pair; zeros stand in for missing neighbours
  # (|.| >= 0, so they never win the max).
  zh, zw = jnp.zeros_like(probs[:, :d, :, 0]), jnp.zeros_like(probs[:, :, :d, 0])
  eh = jnp.maximum(jnp.concatenate([dh, zh], 1), jnp.concatenate([zh, dh], 1))
  ew = jnp.maximum(jnp.concatenate([dw, zw], 2), jnp.concatenate([zw, dw], 2))
  return jnp.maximum(eh, ew)


def _window(x, radius, op, init):
  """Reduces int32 [B, H, W] over (2 radius + 1)^2 windows.

  The padding is `init` (neutral for `op`), so each window is in effect clipped to the image.
  """
  k = 2 * radius + 1
  return jax.lax.reduce_window(x, jnp.int32(init), op, (1, k, k), (1, 1, 1), 'SAME')


def paste_band(mask, probs_j, *, edge_threshold=0.3, edge_band=2, edge_distance=1):
  """Pixels EdgePredictMix ignores: near the paste boundary and near an edge of j.

  Args:
    mask: [B, H, W] paste mask M (> 0 where j is pasted).
    probs_j: [B, H, W, C + 1] probabilities of the pasted images (seed_probs(seed)[perm]).
    edge_threshold: edge pixel when edge_strength >= this.
    edge_band: Chebyshev radius r of both dilations; 0 = no band.
    edge_distance: the pixel distance edge_strength compares over.

  Returns:
    bool [B, H, W]: dilate_r(M) & ~erode_r(M) & dilate_r(edge_strength >= edge_threshold).
  """
  if edge_band == 0:
    return jnp.zeros(mask.shape, bool)
  m = (mask > 0).astype(jnp.int32)
  edge = (edge_strength(probs_j, edge_distance) >= edge_threshold).astype(jnp.int32)
  near_both_sides = (_window(m, edge_band, jax.lax.max, 0)
                     > _window(m, edge_band, jax.lax.min, 1))
  near_edge = _window(edge, edge_band, jax.lax.max, 0) > 0
  return near_both_sides & near_edge


def mix_batch(rng, images, hard, labels, *, kind='certainmix', class_prob=0.5,
              min_area=0.01, seed=None, edge_threshold=0.3, edge_band=2, edge_distance=1):
  """Pastes class regions of a permuted batch onto the batch.

  Args:
    rng: PRNG key.
    images: [B, H, W, 3] float images.
    hard: int32 [B, H, W] hard labels (0 bg, c + 1 class c, 255 ignore);
      argmax_labels(seed) for 'classmix' and 'edgepredictmix'.
    labels: [B, C] float multi-hot image labels.
    kind: 'certainmix' | 'classmix' | 'edgepredictmix' | 'none' ('none'
      returns the inputs).
    class_prob: each eligible class of j is pasted with this probability.
    min_area: fraction of H * W a class must cover to keep / gain its label.
    seed: [B, H, W, C] soft seed in [0, 1]; required by 'edgepredictmix'
      only (its edge map).
    edge_threshold: 'edgepredictmix': edge pixel when the edge strength is
      >= this (see the module docstring).
    edge_band: 'edgepredictmix': Chebyshev radius in pixels of the ignored
      band (python int >= 0; 0 = none, the output is then ClassMix's).
    edge_distance: 'edgepredictmix': pixels compared for the edge strength
      (python int >= 1).

  Returns:
    (mixed_images, mixed_hard, mixed_labels float [B, C], mask float [B,H,W]).
    mask is M (the band is not part of it). For 'edgepredictmix' the ignored
    band is paste_band(mask, seed_probs(seed)[perm], ...): with the same rng,
    'classmix' gives the same perm and mask, and mixed_hard differs from its
    mixed_hard exactly by 255 on the band.

  Class choice: a class of j is eligible when it is in j's labels and has at
  least one pixel in hard_j (a class without pixels would paste nothing). If j
  has eligible classes but the coin flips chose none, the eligible class with
  the largest draw is forced, so the paste is never empty.

  Mixed labels: a pasted class is on if it covers >= min_area * H * W pixels
  of the mixed hard map. A class of i stays on unless the paste overwrote some
  of its hard_i pixels with another label and it now covers < min_area * H * W
  pixels; classes of i without pixels in hard_i, or untouched by the paste,
  keep their label. For 'edgepredictmix' this uses the mixed hard map before
  the band is ignored.
  """
  if kind not in MIX_KINDS:
    raise ValueError(f'Unknown mix kind {kind!r}; allowed: {MIX_KINDS}.')
  b, h, w = hard.shape
  if kind == 'none':
    return images, hard, labels, jnp.zeros((b, h, w), jnp.float32)
  c = labels.shape[-1]
  if kind == 'edgepredictmix':
    if seed is None:
      raise ValueError("mix kind 'edgepredictmix' needs the soft seed: pass seed=[B,H,W,C].")
    if tuple(seed.shape) != (b, h, w, c):
      raise ValueError(f'seed shape {tuple(seed.shape)} is not (B, H, W, C) = {(b, h, w, c)}.')
    if int(edge_band) != edge_band or edge_band < 0:
      raise ValueError(f'edge_band={edge_band!r} must be an integer >= 0.')
  k_perm, k_cls = jax.random.split(rng)
  perm = jax.random.permutation(k_perm, b)
  hard_j, images_j = hard[perm], images[perm]
  present_i = labels > 0.5
  area_i = _class_areas(hard, c)

  # Row i holds the draws for the image pasted onto i, i.e. j = perm[i].
  eligible = present_i[perm] & (area_i[perm] > 0)
  draws = jax.random.uniform(k_cls, (b, c))
  chosen = eligible & (draws < class_prob)
  forced = jax.nn.one_hot(jnp.argmax(jnp.where(eligible, draws, -1.0), -1), c)
  forced = (forced > 0) & eligible
  chosen = jnp.where(jnp.any(chosen, -1, keepdims=True), chosen, forced)

  onehot_j = jax.nn.one_hot(hard_j, c + 1, dtype=jnp.float32)[..., 1:]
  mask = jnp.sum(onehot_j * chosen[:, None, None, :], axis=-1)  # 0 or 1.
  on = mask > 0
  mixed_images = jnp.where(on[..., None], images_j, images).astype(images.dtype)
  mixed_hard = jnp.where(on, hard_j, hard).astype(hard.dtype)

  thresh = min_area * h * w
  area_mixed = _class_areas(mixed_hard, c)
  onehot_i = jax.nn.one_hot(hard, c + 1, dtype=jnp.float32)[..., 1:]
  # Pixels of class c in hard_i now showing another label: the paste hid them.
  lost = jnp.sum(onehot_i * (mixed_hard != hard)[..., None], axis=(1, 2))
  dropped = (lost > 0) & (area_mixed < thresh)
  keep_i = present_i & ~dropped
  gain_j = chosen & (area_mixed >= thresh)
  mixed_labels = (keep_i | gain_j).astype(labels.dtype)
  if kind == 'edgepredictmix':
    band = paste_band(mask, seed_probs(seed)[perm], edge_threshold=edge_threshold,
                      edge_band=int(edge_band), edge_distance=int(edge_distance))
    mixed_hard = jnp.where(band, IGNORE, mixed_hard).astype(hard.dtype)
  return mixed_images, mixed_hard, mixed_labels, mask.astype(jnp.float32)
