"""Multi-scale + flip inference to seeds and predictions (METHOD.md section 5).

`make_predict_fn` jits one function per input shape: the scales and the flip are unrolled inside
it (static), so a set of same-sized images compiles once.
"""

import jax
import jax.numpy as jnp
import numpy as np

from recurseed_jax import method


def make_predict_fn(model, scales=(1.0,), flip=True):
  """Returns jitted `predict(variables, images) -> dict(cam, seg, class_prob)` at image size.

  cam: mean over passes of relu(CAM) resized to the image [B,H,W,C]; seg: mean softmax of the
  segmentation head [B,H,W,C+1]; class_prob: mean sigmoid of the class logits [B,C].
  """
  scales = tuple(float(s) for s in scales)

  @jax.jit
  def predict(variables, images):
    b, h, w = images.shape[:3]
    cams, segs, probs, n = 0.0, 0.0, 0.0, 0
    for s in scales:
      size = (max(int(round(h * s)), 1), max(int(round(w * s)), 1))
      x = images if size == (h, w) else method.resize(images, size)
      if flip:  # both orientations in one batch: one model call per scale
        x = jnp.concatenate([x, x[:, :, ::-1]], axis=0)
      out = model.apply(variables, x, train=False)
      cam = method.resize(jax.nn.relu(out['cam']), (h, w))
      seg = method.resize(jax.nn.softmax(out['seg'], axis=-1), (h, w))
      prob = jax.nn.sigmoid(out['logits'])
      if flip:
        cam = cam[:b] + cam[b:, :, ::-1]
        seg = seg[:b] + seg[b:, :, ::-1]
        prob = prob[:b] + prob[b:]
      cams, segs, probs = cams + cam, segs + seg, probs + prob
      n += 2 if flip else 1
    return dict(cam=cams / n, seg=segs / n, class_prob=probs / n)

  return predict


def normalized_scores(fg, keep, eps=1e-5):
  """Foreground scores of kept classes, each divided by its spatial max. fg [B,H,W,C]."""
  fg = jnp.maximum(fg, 0) * keep[:, None, None, :]
  return fg / (jnp.max(fg, axis=(1, 2), keepdims=True) + eps)


def seed_with_background(scores, bg_power=2.0):
  """[B,H,W,C] normalised scores -> [B,H,W,C+1] with background (1 - max)^bg_power first."""
  bg = (1.0 - jnp.max(scores, axis=-1, keepdims=True)) ** bg_power
  return jnp.concatenate([bg, scores], axis=-1)


def seed_label_map(scores, bg_power=2.0):
  """Argmax of the seed (0 = background, c+1 = class c)."""
  return jnp.argmax(seed_with_background(scores, bg_power), axis=-1).astype(jnp.uint8)


def segmentation_label_map(seg, keep):
  """Argmax of the mean softmax over background and kept classes. seg [B,H,W,C+1]."""
  mask = jnp.concatenate([jnp.ones_like(keep[:, :1]), keep], axis=-1)
  return jnp.argmax(jnp.where(mask[:, None, None, :] > 0, seg, -1.0), axis=-1).astype(jnp.uint8)


def keep_classes(class_prob, labels=None, threshold=0.34):
  """Ground-truth labels for training images; classes above the threshold otherwise."""
  if labels is not None:
    return jnp.asarray(labels, jnp.float32)
  return (class_prob >= threshold).astype(jnp.float32)


def quantize(x):
  """[0, 1] floats -> uint8 (seeds are stored compactly, never pickled)."""
  return np.asarray(jnp.round(jnp.clip(x, 0, 1) * 255), np.uint8)


def dequantize(q):
  return q.astype(np.float32) / 255.0


def batched(n, batch_size):
  for start in range(0, n, batch_size):
    yield start, min(start + batch_size, n)


def run_inference(predict, variables, images, mean, std, batch_size, labels=None,
                  class_threshold=0.34, progress=None):
  """Runs `predict` over uint8 images [N,H,W,3] in fixed-size batches (the last one padded).

  Yields per batch: (start, stop, keep [n,C], cam scores [n,H,W,C] normalised, seg softmax
  [n,H,W,C+1]) as numpy arrays.
  """
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  n = len(images)
  for start, stop in batched(n, batch_size):
    x = (images[start:stop].astype(np.float32) / 255.0 - mean) / std
    pad = batch_size - len(x)
    if pad:  # one static batch shape: no recompilation for the last batch
      x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
    out = predict(variables, x)
    out = {k: v[: stop - start] for k, v in out.items()}
    keep = keep_classes(out['class_prob'], None if labels is None else labels[start:stop],
                        class_threshold)
    cam = normalized_scores(out['cam'], keep)
    yield (start, stop, np.asarray(keep), np.asarray(cam), np.asarray(out['seg']))
    if progress is not None:
      progress.update(stop - start)


@jax.jit
def seg_scores(seg, keep):
  """Seed scores from the segmentation head: kept foreground softmax channels, max-normalised."""
  return normalized_scores(seg[..., 1:], keep)
