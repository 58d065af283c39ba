"""CertainMix / ClassMix batch mixing (METHOD.md section 3).

Image i of the batch receives pixels of image j = perm[i]: those whose hard
label is one of a random subset of j's classes. CertainMix and ClassMix differ
only in the hard map the caller passes (certainty-filtered vs argmax), so one
function serves both. Background and ignored pixels are never pasted.
"""

import jax
import jax.numpy as jnp

MIX_KINDS = ('certainmix', 'classmix', 'none')


def _class_areas(hard, num_classes):
  """[B, H, W] hard map -> [B, C] pixel count per foreground class."""
  # one_hot maps out-of-range labels (255) to all-zero rows.
  onehot = jax.nn.one_hot(hard, num_classes + 1, dtype=jnp.float32)
  return jnp.sum(onehot[..., 1:], axis=(1, 2))


def mix_batch(rng, images, hard, labels, *, kind='certainmix', class_prob=0.5,
              min_area=0.01):
  """Pastes class regions of a permuted batch onto the batch.

  Args:
    rng: PRNG key.
    images: [B, H, W, 3] float images.
    hard: int32 [B, H, W] hard labels (0 bg, c + 1 class c, 255 ignore).
    labels: [B, C] float multi-hot image labels.
    kind: 'certainmix' | 'classmix' | 'none' ('none' returns the inputs).
    class_prob: each eligible class of j is pasted with this probability.
    min_area: fraction of H * W a class must cover to keep / gain its label.

  Returns:
    (mixed_images, mixed_hard, mixed_labels float [B, C], mask float [B,H,W]).

  Class choice: a class of j is eligible when it is in j's labels and has at
  least one pixel in hard_j (a class without pixels would paste nothing). If j
  has eligible classes but the coin flips chose none, the eligible class with
  the largest draw is forced, so the paste is never empty.

  Mixed labels: a pasted class is on if it covers >= min_area * H * W pixels
  of the mixed hard map. A class of i stays on unless the paste overwrote some
  of its hard_i pixels with another label and it now covers < min_area * H * W
  pixels; classes of i without pixels in hard_i, or untouched by the paste,
  keep their label.
  """
  if kind not in MIX_KINDS:
    raise ValueError(f'Unknown mix kind {kind!r}; allowed: {MIX_KINDS}.')
  b, h, w = hard.shape
  if kind == 'none':
    return images, hard, labels, jnp.zeros((b, h, w), jnp.float32)
  c = labels.shape[-1]
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
  return mixed_images, mixed_hard, mixed_labels, mask.astype(jnp.float32)
