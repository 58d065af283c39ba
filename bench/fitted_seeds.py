"""Pseudo masks of a network whose seeds have structure, in two compute dtypes (infer.dtype).

A randomly initialised network's seeds are noise, where any change of precision moves the CRF's
labels; a trained network's are confident and object-shaped. So the segmentation head's last
layer is fitted (least squares on its float32 input features, the centre tap of its 3x3
classifier) to the object masks of synthetic scenes, with logits of about +-`logit`, as
tests/test_fidelity_inference.py fits the authors' twin. The pseudo masks are then made as the
seeds and crf stages make them (infer.step_from_config, infer.run_split, the stored float16 seed,
crf_stage.seed_item, crf.crf_label_map) with config.infer.dtype float32 and bfloat16.

Used by tests/test_infer_dtype.py (a small network) and bench/infer.py (the agreement figure).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from data_pipeline import splits
from recurseed_jax import crf
from recurseed_jax import infer
from recurseed_jax.models import deeplab
from recurseed_jax.stages import crf as crf_stage

COLOURS = np.array([[220, 40, 40], [40, 200, 60], [50, 60, 230], [230, 200, 40], [200, 60, 220],
                    [40, 210, 220]])


def scenes(sizes, num_classes, seed=0):
  """Photo-like uint8 images with 2-3 textured objects each (an ellipse, a box), their class maps
  (0 background, c + 1 class c) and float32 labels [N, C]."""
  rng = np.random.default_rng(seed)
  images, maps, labels = [], [], np.zeros((len(sizes), num_classes), np.float32)
  for k, (h, w) in enumerate(sizes):
    yy, xx = np.mgrid[:h, :w] / np.array([h, w])[:, None, None]
    img = rng.uniform(60, 180, 3) + 50 * np.stack(
        [np.sin(3 * xx + c) * np.cos(2 * yy - c) for c in range(3)], -1)
    cls = np.zeros((h, w), np.int64)
    for j, c in enumerate(rng.choice(num_classes, 2 + k % 2, replace=False)):
      cy, cx = rng.uniform(0.25, 0.75, 2)
      ry, rx = rng.uniform(0.12, 0.25, 2)
      inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
      if j == 1:  # a box, for straight edges
        inside = (np.abs(yy - cy) < ry) & (np.abs(xx - cx) < rx)
      stripes = 30 * np.sin(40 * (xx + (c + 1) * yy))[..., None]
      img = np.where(inside[..., None], COLOURS[c % len(COLOURS)] + stripes, img)
      cls[inside] = c + 1
    images.append(np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8))
    maps.append(cls)
    labels[k, np.unique(cls[cls > 0]) - 1] = 1
  return images, maps, labels


def _is_seg_classifier(module):
  return module.name == 'classifier' and isinstance(module.parent, deeplab.DeepLabV3PlusHead)


@functools.partial(jax.jit, static_argnums=0)
def _classifier_inputs(model, variables, x):
  """The segmentation classifier's input features [B, h, w, D] of images x."""
  seen = []

  def grab(next_fun, args, kwargs, context):
    if _is_seg_classifier(context.module) and context.method_name == '__call__':
      seen.append(args[0])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(grab):
    model.apply(variables, x, train=False)
  return seen[0].astype(jnp.float32)


def fit_seg_classifier(model, variables, images, maps, mean, std, logit=6.0):
  """variables with the segmentation classifier fitted to the class maps (least squares)."""
  feats, targets = [], []
  for image, cls in zip(images, maps):
    x = (image[None].astype(np.float32) / 255.0 - np.asarray(mean)) / np.asarray(std)
    f = np.asarray(_classifier_inputs(model, variables, jnp.asarray(x, jnp.float32)))[0]
    rows = np.minimum(np.arange(f.shape[0]) * cls.shape[0] // f.shape[0], cls.shape[0] - 1)
    cols = np.minimum(np.arange(f.shape[1]) * cls.shape[1] // f.shape[1], cls.shape[1] - 1)
    small = cls[rows[:, None], cols[None]]
    kernel = variables['params']['seg_head']['classifier']['kernel']
    onehot = np.eye(kernel.shape[-1])[small]
    feats.append(f.reshape(-1, f.shape[-1]))
    targets.append((logit * (2 * onehot - 1)).reshape(-1, onehot.shape[-1]))
  sol = np.linalg.lstsq(np.concatenate(feats).astype(np.float64), np.concatenate(targets),
                        rcond=None)[0]
  kernel = np.zeros(kernel.shape, np.float32)
  kernel[1, 1] = sol  # the centre tap: a 1x1 map inside the 3x3 conv
  params = dict(variables['params'])
  params['seg_head'] = dict(params['seg_head'], classifier=dict(kernel=jnp.asarray(kernel)))
  return dict(variables, params=params)


def split_of(images, maps, labels):
  return splits.ArraySplit([f's{i}' for i in range(len(images))], images, labels, masks=maps)


def pseudo_masks(config, model, variables, split):
  """{index: (float32 seed [h, w, K], uint8 pseudo mask [h, w])} as the stages make them."""
  step = infer.step_from_config(config, model, num_kept=int(split.labels.sum(1).max()))
  params = crf.crf_params_from_config(config.crf)
  out = {}
  for i, image, res in infer.run_split(step, {'m': variables}, split, range(len(split)),
                                       config.infer.buckets, config.infer.batch_size,
                                       with_labels=True):
    r = res['m']
    stored = infer.encode_seed(r['seg'], config.infer.seed_dtype)
    _, crf_image, probs, labels = crf_stage.seed_item(config, split.ids[i], image, stored,
                                                      r['classes'].astype(np.uint8))
    out[i] = (r['seg'], crf.crf_label_map(crf_image, probs, labels, **params))
  return out


def compare_dtypes(config, model, variables, split, dtypes=('float32', 'bfloat16')):
  """The pseudo masks of config.infer.dtype = each of `dtypes`, against the first's.

  Returns dict(agreement: the share of pixels whose label is the first dtype's, truth: {dtype:
  the share matching the scenes' class maps}, seed_diff: the largest seed difference).
  """
  runs = {}
  for dtype in dtypes:
    with config.unlocked():
      config.infer.dtype = dtype
    runs[dtype] = pseudo_masks(config, model, variables, split)
  ref, other = runs[dtypes[0]], runs[dtypes[-1]]
  total = sum(m.size for _, m in ref.values())
  same = sum(int((ref[i][1] == other[i][1]).sum()) for i in ref)
  truth = {d: sum(int((r[i][1] == np.asarray(split.mask(i))).sum()) for i in r) / total
           for d, r in runs.items()}
  diff = max(float(np.abs(ref[i][0] - other[i][0]).max()) for i in ref)
  return dict(agreement=same / total, truth=truth, seed_diff=diff, pixels=total)
