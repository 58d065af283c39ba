"""The three RecurSeed losses (METHOD.md section 2, steps 2, 4 and 5).

Each loss is a ratio sum / count over the batch. The `*_parts` functions return the pair
(sum, count) so that data-parallel code can add both over devices before dividing: a mean of
per-device means would weight devices by their (unequal) counts of valid pixels.
"""

import jax
import jax.numpy as jnp

from recurseed_jax.method.seeds import cam_seed
from recurseed_jax.method.seeds import resize

CAM_LOSS_KINDS = ('l1', 'mse')


def ratio(parts):
  """sum / count of a (sum, count) pair; 0 when count is 0."""
  total, count = parts
  return total / jnp.maximum(count, 1.0)


def multilabel_soft_margin_parts(logits, labels):
  """(summed BCE with logits, number of terms) over batch and classes."""
  # log_sigmoid is stable for large |logits|, unlike log(sigmoid(.)).
  nll = -(labels * jax.nn.log_sigmoid(logits) +
          (1.0 - labels) * jax.nn.log_sigmoid(-logits))
  return jnp.sum(nll), jnp.asarray(nll.size, jnp.float32)


def multilabel_soft_margin(logits, labels):
  """Mean BCE with logits over batch and classes.

  Same value as torch's MultiLabelSoftMarginLoss with mean reduction.

  Args:
    logits: [B, C] class logits.
    labels: [B, C] float multi-hot targets.

  Returns:
    Scalar loss.
  """
  return ratio(multilabel_soft_margin_parts(logits, labels))


def seg_cross_entropy_parts(logits, hard, ignore_index=255):
  """(summed pixel cross-entropy, number of non-ignored pixels); see `seg_cross_entropy`."""
  logits = resize(logits, hard.shape[1:3]).astype(jnp.float32)
  valid = hard != ignore_index
  target = jnp.where(valid, hard, 0).astype(jnp.int32)  # Safe gather index.
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
  valid = valid.astype(jnp.float32)
  return jnp.sum(nll * valid), jnp.sum(valid)


def seg_cross_entropy(logits, hard, ignore_index=255):
  """Pixel cross-entropy averaged over non-ignored pixels of the batch.

  Args:
    logits: [B, H, W, K] segmentation logits; resized bilinearly to hard's
      H, W if they differ.
    hard: int [B, H, W] labels in [0, K) or `ignore_index`.
    ignore_index: label excluded from the loss.

  Returns:
    Scalar loss; 0 (with finite zero gradient) when every pixel is ignored.
  """
  return ratio(seg_cross_entropy_parts(logits, hard, ignore_index))


def cam_loss_parts(cam, seg_probs, labels, kind='l1'):
  """(summed error, number of (present class, pixel) pairs); see `cam_loss`."""
  if kind not in CAM_LOSS_KINDS:
    raise ValueError(f'Unknown CAM loss {kind!r}; allowed: {CAM_LOSS_KINDS}.')
  _, h, w, _ = cam.shape
  target = jax.lax.stop_gradient(resize(seg_probs, (h, w)))
  pred = cam_seed(cam, labels)
  diff = pred - target
  err = jnp.abs(diff) if kind == 'l1' else jnp.square(diff)
  present = (labels > 0.5).astype(jnp.float32)[:, None, None, :]
  return jnp.sum(err * present), jnp.sum(present) * h * w


def cam_loss(cam, seg_probs, labels, kind='l1'):
  """Pulls the normalised CAM of present classes toward the seg probabilities.

  Args:
    cam: [B, h, w, C] raw CAM.
    seg_probs: [B, H, W, C] foreground softmax probabilities, any resolution
      (resized bilinearly to h, w); used under stop-gradient as the target.
    labels: [B, C] float multi-hot image labels.
    kind: 'l1' | 'mse' (config loss.cam_kind).

  Returns:
    Scalar mean over (present class, pixel) pairs; 0 when no class present.
  """
  return ratio(cam_loss_parts(cam, seg_probs, labels, kind))
