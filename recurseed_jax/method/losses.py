"""The three RecurSeed losses (METHOD.md section 2, steps 2, 4 and 5)."""

import jax
import jax.numpy as jnp

from recurseed_jax.method.seeds import cam_seed
from recurseed_jax.method.seeds import resize

CAM_LOSS_KINDS = ('l1', 'mse')


def multilabel_soft_margin(logits, labels):
  """Mean BCE with logits over batch and classes.

  Same value as torch's MultiLabelSoftMarginLoss with mean reduction.

  Args:
    logits: [B, C] class logits.
    labels: [B, C] float multi-hot targets.

  Returns:
    Scalar loss.
  """
  # log_sigmoid is stable for large |logits|, unlike log(sigmoid(.)).
  nll = -(labels * jax.nn.log_sigmoid(logits) +
          (1.0 - labels) * jax.nn.log_sigmoid(-logits))
  return jnp.mean(nll)


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
  logits = resize(logits, hard.shape[1:3]).astype(jnp.float32)
  valid = hard != ignore_index
  target = jnp.where(valid, hard, 0).astype(jnp.int32)  # Safe gather index.
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
  valid = valid.astype(jnp.float32)
  return jnp.sum(nll * valid) / jnp.maximum(jnp.sum(valid), 1.0)


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
  if kind not in CAM_LOSS_KINDS:
    raise ValueError(f'Unknown CAM loss {kind!r}; allowed: {CAM_LOSS_KINDS}.')
  _, h, w, _ = cam.shape
  target = jax.lax.stop_gradient(resize(seg_probs, (h, w)))
  pred = cam_seed(cam, labels)
  diff = pred - target
  err = jnp.abs(diff) if kind == 'l1' else jnp.square(diff)
  present = (labels > 0.5).astype(jnp.float32)[:, None, None, :]
  count = jnp.sum(present) * h * w
  return jnp.sum(err * present) / jnp.maximum(count, 1.0)
