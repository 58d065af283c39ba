"""Seeds for RecurSeed (METHOD.md section 2, step 3).

A seed is a [B, h, w, C] map of foreground scores in [0, 1], one channel per
foreground class, with absent classes set to zero. Seeds come from the CAM
(`cam_seed`) early in training and from the segmentation head (`seg_seed`)
afterwards; `select_seed` is the recursion switch. All functions are pure and
jittable with static shapes; layout is NHWC.
"""

import jax
import jax.numpy as jnp


def resize(x, size, method='bilinear'):
  """Resizes the spatial axes of an NHWC map to `size` = (H, W).

  Bilinear with half-pixel centres (align_corners=False) and no antialiasing,
  i.e. the same values as torch's F.interpolate(..., align_corners=False), so
  seeds match the reference implementation when downsampling too.
  """
  size = tuple(int(s) for s in size)
  if tuple(x.shape[-3:-1]) == size:
    return x  # Static check: no-op resizes cost nothing.
  shape = x.shape[:-3] + size + x.shape[-1:]
  return jax.image.resize(x, shape, method=method, antialias=False)


def _present(labels):
  """[B, C] multi-hot -> [B, 1, 1, C] float presence mask."""
  return (labels > 0.5).astype(jnp.float32)[:, None, None, :]


def cam_seed(cam, labels, eps=1e-5):
  """Normalised CAM seed: relu, absent classes zeroed, divided by spatial max.

  Args:
    cam: [B, h, w, C] raw class activation maps.
    labels: [B, C] float multi-hot image labels.
    eps: keeps the division finite for all-zero maps.

  Returns:
    [B, h, w, C] in [0, 1]; each present class with a positive activation has
    its maximum at 1 / (1 + eps / max).
  """
  a = jax.nn.relu(cam) * _present(labels)
  peak = jnp.max(a, axis=(1, 2), keepdims=True)
  return a / (peak + eps)


def seg_seed(seg_logits, labels):
  """Segmentation seed: foreground softmax probabilities of present classes.

  Args:
    seg_logits: [B, H, W, C+1] segmentation logits, channel 0 is background.
    labels: [B, C] float multi-hot image labels.

  Returns:
    [B, H, W, C] foreground probabilities, absent classes zeroed.
  """
  probs = jax.nn.softmax(seg_logits, axis=-1)
  return probs[..., 1:] * _present(labels)


def select_seed(step, cam_seed, seg_seed, cam_only_steps, seed_mix):
  """Recursion switch between the CAM seed and the segmentation seed.

  Args:
    step: traced int scalar, the training step.
    cam_seed: [B, H, W, C] CAM seed.
    seg_seed: [B, H, W, C] segmentation seed, same shape as `cam_seed` (the
      caller resizes).
    cam_only_steps: steps `< cam_only_steps` use the CAM seed only.
    seed_mix: afterwards the seed is (1 - seed_mix) * seg + seed_mix * cam.

  Returns:
    [B, H, W, C] seed.
  """
  mixed = (1.0 - seed_mix) * seg_seed + seed_mix * cam_seed
  # jnp.where, not Python `if`: `step` is traced inside the train step.
  return jnp.where(jnp.asarray(step) < cam_only_steps, cam_seed, mixed)
