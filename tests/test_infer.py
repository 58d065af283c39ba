"""Tests for recurseed_jax.infer against slow, obvious numpy references.

The pure functions are checked on random inputs; `make_predict_fn`, `make_infer_step` and
`run_split` use one tiny RecurSeedNet (width 8, output stride 8, 'rbg' init key) on images of at
most 40 x 40, so the handful of compiled shapes stays small.
"""

import functools
import math
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from data_pipeline import splits
from recurseed_jax import infer
from recurseed_jax import models
from recurseed_jax import parallel
from reference import compiled_flops
from reference import np_resize

NUM_CLASSES = 5
SIZE = 32
BATCH = 4
SCALES = (1.0, 0.5)


# --- numpy references (loops on purpose) -------------------------------------------------------


def np_normalized_scores(fg, keep, eps=1e-5):
  b, _, _, c = fg.shape
  out = np.zeros(fg.shape, np.float64)
  for i in range(b):
    for k in range(c):
      a = np.maximum(fg[i, :, :, k].astype(np.float64), 0.0) * keep[i, k]
      out[i, :, :, k] = a / (a.max() + eps)
  return out


def np_seed_with_background(scores, bg_power=2.0):
  b, h, w, c = scores.shape
  out = np.zeros((b, h, w, c + 1), np.float64)
  for i in range(b):
    for y in range(h):
      for x in range(w):
        out[i, y, x, 0] = (1.0 - max(scores[i, y, x])) ** bg_power
        out[i, y, x, 1:] = scores[i, y, x]
  return out


def np_argmax_first(values):
  best, arg = -math.inf, 0
  for k, v in enumerate(values):
    if v > best:
      best, arg = v, k
  return arg


def np_seed_label_map(scores, bg_power=2.0):
  seed = np_seed_with_background(scores, bg_power)
  b, h, w, _ = seed.shape
  out = np.zeros((b, h, w), np.uint8)
  for i in range(b):
    for y in range(h):
      for x in range(w):
        out[i, y, x] = np_argmax_first(seed[i, y, x])
  return out


def np_segmentation_label_map(seg, keep):
  b, h, w, c1 = seg.shape
  out = np.zeros((b, h, w), np.uint8)
  for i in range(b):
    allowed = [0] + [k + 1 for k in range(c1 - 1) if keep[i, k] > 0]
    for y in range(h):
      for x in range(w):
        best = max(allowed, key=lambda k: (seg[i, y, x, k], -k))  # first of equal maxima
        out[i, y, x] = best
  return out


def np_quantize(x):
  out = np.zeros(x.shape, np.uint8)
  for idx in np.ndindex(x.shape):
    v = min(max(float(x[idx]), 0.0), 1.0)
    out[idx] = int(np.round(np.float32(v) * np.float32(255)))
  return out


def np_softmax(x):
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


# --- the pure functions ------------------------------------------------------------------------


def _keep(rng, b, c):
  keep = (rng.random((b, c)) < 0.6).astype(np.float32)
  keep[0] = 0.0  # an image with no kept class
  keep[1] = 1.0
  return keep


def test_normalized_scores_matches_numpy():
  rng = np.random.default_rng(0)
  fg = rng.normal(size=(3, 6, 7, NUM_CLASSES)).astype(np.float32)
  fg[2, ..., 3] = -1.0  # an all-negative kept map gives zeros, not NaN
  keep = _keep(rng, 3, NUM_CLASSES)
  keep[2, 3] = 1.0
  out = np.asarray(infer.normalized_scores(jnp.asarray(fg), jnp.asarray(keep)))
  np.testing.assert_allclose(out, np_normalized_scores(fg, keep), rtol=1e-6, atol=1e-7)
  assert np.all(out >= 0) and np.all(out <= 1)
  assert not out[0].any()


def test_seed_with_background_matches_numpy():
  rng = np.random.default_rng(1)
  scores = rng.random((2, 5, 6, NUM_CLASSES)).astype(np.float32)
  for bg_power in (2.0, 1.0, 3.5):
    out = np.asarray(infer.seed_with_background(jnp.asarray(scores), bg_power))
    assert out.shape == (2, 5, 6, NUM_CLASSES + 1)
    np.testing.assert_allclose(out, np_seed_with_background(scores, bg_power),
                               rtol=1e-5, atol=1e-6)


def test_seed_label_map_matches_numpy():
  rng = np.random.default_rng(2)
  scores = rng.random((2, 8, 9, NUM_CLASSES)).astype(np.float32) ** 3  # plenty of background
  scores[1, 0, 0] = 0.0  # all zero: background
  for bg_power in (2.0, 1.0):
    out = np.asarray(infer.seed_label_map(jnp.asarray(scores), bg_power))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, np_seed_label_map(scores, bg_power))
  assert set(np.unique(out).tolist()) == set(range(NUM_CLASSES + 1))
  assert out[1, 0, 0] == 0


def test_segmentation_label_map_matches_numpy():
  rng = np.random.default_rng(3)
  seg = np_softmax(3 * rng.normal(size=(4, 6, 7, NUM_CLASSES + 1))).astype(np.float32)
  keep = _keep(rng, 4, NUM_CLASSES)
  out = np.asarray(infer.segmentation_label_map(jnp.asarray(seg), jnp.asarray(keep)))
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(out, np_segmentation_label_map(seg, keep))
  assert not out[0].any()  # nothing kept: all background
  for i in range(4):  # never a class that is not kept
    assert set(np.unique(out[i]).tolist()) <= {0} | {k + 1 for k in np.flatnonzero(keep[i])}


def test_keep_classes():
  rng = np.random.default_rng(4)
  prob = rng.random((6, NUM_CLASSES)).astype(np.float32)
  prob[0, 0] = 0.34  # the threshold itself is kept
  for threshold in (0.34, 0.5, 0.05):
    out = np.asarray(infer.keep_classes(jnp.asarray(prob), threshold=threshold))
    ref = np.zeros(prob.shape, np.float32)
    for i, k in np.ndindex(prob.shape):
      ref[i, k] = 1.0 if prob[i, k] >= np.float32(threshold) else 0.0
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, ref)
  labels = (rng.random((6, NUM_CLASSES)) < 0.5).astype(np.uint8)
  out = np.asarray(infer.keep_classes(jnp.asarray(prob), labels))
  assert out.dtype == np.float32
  np.testing.assert_array_equal(out, labels.astype(np.float32))  # labels win over probabilities


def test_quantize_dequantize():
  rng = np.random.default_rng(5)
  x = rng.uniform(-0.3, 1.3, (3, 7, 5)).astype(np.float32)
  x.flat[:6] = [0.0, 1.0, -1.0, 2.0, 0.5, 1.0 / 255]
  q = infer.quantize(x)
  assert q.dtype == np.uint8 and q.shape == x.shape
  np.testing.assert_array_equal(q, np_quantize(x))
  assert q.flat[:4].tolist() == [0, 255, 0, 255]
  d = infer.dequantize(q)
  assert d.dtype == np.float32
  ref = np.zeros(q.shape, np.float32)
  for idx in np.ndindex(q.shape):
    ref[idx] = int(q[idx]) / 255.0
  np.testing.assert_allclose(d, ref, rtol=1e-7)
  np.testing.assert_allclose(d, np.clip(x, 0, 1), atol=0.5 / 255 + 1e-7)  # round trip
  np.testing.assert_array_equal(infer.quantize(d), q)


def test_encode_seed_float16_and_uint8():
  rng = np.random.default_rng(15)
  x = rng.random((5, 6, 3)).astype(np.float32) ** 4  # many small scores
  half = infer.encode_seed(x, 'float16')
  assert half.dtype == np.float16
  back = infer.dequantize(half)
  assert back.dtype == np.float32
  np.testing.assert_allclose(back, x, rtol=2 ** -11, atol=1e-7)  # 11 significant bits
  np.testing.assert_array_equal(infer.encode_seed(x, 'uint8'), infer.quantize(x))
  with pytest.raises(ValueError, match='infer.seed_dtype'):
    infer.encode_seed(x, 'int8')


def test_seg_scores_matches_numpy():
  rng = np.random.default_rng(6)
  seg = np_softmax(2 * rng.normal(size=(3, 6, 5, NUM_CLASSES + 1))).astype(np.float32)
  keep = _keep(rng, 3, NUM_CLASSES)
  out = np.asarray(infer.seg_scores(jnp.asarray(seg), jnp.asarray(keep)))
  assert out.shape == (3, 6, 5, NUM_CLASSES)
  np.testing.assert_allclose(out, np_normalized_scores(seg[..., 1:], keep), rtol=1e-6,
                             atol=1e-7)


# --- make_predict_fn, make_infer_step and run_split on a tiny model ---------------------------


@functools.lru_cache(maxsize=None)
def _model_and_variables():
  cfg = default.get_config()
  cfg.model.width = 8
  model = models.build_model(cfg.model, NUM_CLASSES)
  init = jax.jit(functools.partial(model.init, train=False))
  variables = init(jax.random.key(0, impl='rbg'), jnp.zeros((1, SIZE, SIZE, 3), jnp.float32))
  return model, variables


@functools.lru_cache(maxsize=None)
def _predict(scales, flip, align=32):
  model, _ = _model_and_variables()
  return infer.make_predict_fn(model, scales, flip, align=align)


@functools.lru_cache(maxsize=None)
def _jit_apply():
  model, _ = _model_and_variables()
  return jax.jit(functools.partial(model.apply, train=False))


def _images(n=BATCH, seed=0):
  return np.random.default_rng(seed).normal(size=(n, SIZE, SIZE, 3)).astype(np.float32)


def _reference_predict(variables, images, scales, flip):
  """One model call per scale and per orientation, outputs resized in numpy and averaged."""
  apply = _jit_apply()
  b, h, w = images.shape[:3]
  cams, segs, probs, n = 0.0, 0.0, 0.0, 0
  for s in scales:
    size = (max(int(h * s), 1), max(int(w * s), 1))  # the authors' int(h * scale)
    x = np_resize(images, size).astype(np.float32)
    for flipped in ((False, True) if flip else (False,)):
      xi = x[:, :, ::-1] if flipped else x
      out = jax.device_get(apply(variables, jnp.asarray(np.ascontiguousarray(xi))))
      cam = np_resize(np.maximum(out['cam'], 0), (h, w))
      seg = np_resize(np_softmax(out['seg'].astype(np.float64)), (h, w))
      prob = 1 / (1 + np.exp(-out['logits'].astype(np.float64)))
      if flipped:
        cam, seg = cam[:, :, ::-1], seg[:, :, ::-1]
      cams, segs, probs, n = cams + cam, segs + seg, probs + prob, n + 1
  return dict(cam=cams / n, seg=segs / n, class_prob=probs / n)


@pytest.mark.slow
@pytest.mark.parametrize('flip', [True, False])
def test_make_predict_fn_matches_per_pass_reference(flip):
  _, variables = _model_and_variables()
  images = _images()
  out = jax.device_get(_predict(SCALES, flip)(variables, jnp.asarray(images)))
  ref = _reference_predict(variables, images, SCALES, flip)
  assert out['cam'].shape == (BATCH, SIZE, SIZE, NUM_CLASSES)
  assert out['seg'].shape == (BATCH, SIZE, SIZE, NUM_CLASSES + 1)
  assert out['class_prob'].shape == (BATCH, NUM_CLASSES)
  for key in ('cam', 'seg', 'class_prob'):
    np.testing.assert_allclose(out[key], ref[key], rtol=1e-5, atol=1e-5, err_msg=key)
  np.testing.assert_allclose(out['seg'].sum(-1), 1.0, atol=1e-5)
  assert out['cam'].min() >= 0 and out['cam'].max() > 0


@pytest.mark.slow
def test_padded_image_matches_image_alone():
  """Padding bottom/right changes nothing, to float precision, also where a scaled size is not a
  multiple of the output stride (the decoder resizes each image's own valid cells)."""
  _, variables = _model_and_variables()
  predict = _predict(SCALES, True, 8)
  rng = np.random.default_rng(8)
  sizes = [(32, 16), (27, 21)]  # 32 x 16 and 16 x 8 at scale 0.5: multiples of 8; 27 x 21: not
  canvas = rng.normal(size=(2, 40, 40, 3)).astype(np.float32)  # noise in the padding
  alone = []
  for j, (h, w) in enumerate(sizes):
    alone.append(rng.normal(size=(1, h, w, 3)).astype(np.float32))
    canvas[j, :h, :w] = alone[-1][0]
  out = jax.device_get(predict(variables, jnp.asarray(canvas), jnp.asarray(sizes, jnp.int32)))
  for j, (h, w) in enumerate(sizes):
    ref = _reference_predict(variables, alone[j], SCALES, True)
    for key, tol in (('cam', 1e-5), ('seg', 1e-5)):
      np.testing.assert_allclose(out[key][j, :h, :w], ref[key][0], atol=tol, err_msg=key)
      assert not out[key][j, h:].any() and not out[key][j, :, w:].any()  # zero past the image
    np.testing.assert_allclose(out['class_prob'][j], ref['class_prob'][0], atol=1e-6)


@pytest.mark.slow  # 20 s even for one interpolation (two whole seed steps compile)
@pytest.mark.parametrize('interpolation', infer.INTERPOLATIONS)
def test_passes_in_sequence_match_one_function(interpolation):
  """One pass at a time into donated running sums gives what every pass in one function gives
  (padded images; the flip's batch differs, so the last bit may)."""
  model, variables = _model_and_variables()
  rng = np.random.default_rng(11)
  canvas = rng.normal(size=(2, 40, 40, 3)).astype(np.float32)
  hw = np.array([[32, 16], [27, 21]], np.int32)
  outs = [jax.device_get(infer.make_predict_fn(model, SCALES, True, 8, interpolation, unrolled=u)(
      variables, jnp.asarray(canvas), hw)) for u in (False, True)]
  for key in ('cam', 'seg', 'class_prob'):
    ref = outs[1][key]
    np.testing.assert_allclose(outs[0][key], ref, rtol=0, atol=1e-6 * np.abs(ref).max(),
                               err_msg=key)


@pytest.mark.slow
def test_predict_keeps_the_classes_asked_for():
  """classes=[B,K] keeps those classes' channels only (the seeds step keeps the labels'): the
  same values as taking them from every class's outputs."""
  model, variables = _model_and_variables()
  x = jnp.asarray(_images(2, seed=12))
  predict = _predict(SCALES, True, 8)
  classes = np.array([[3, 0], [1, 4]], np.int32)
  full = jax.device_get(predict(variables, x))
  kept = jax.device_get(predict(variables, x, classes=jnp.asarray(classes)))
  take = np.take_along_axis
  np.testing.assert_allclose(kept['cam'], take(full['cam'], classes[:, None, None], -1),
                             rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(kept['seg'], take(full['seg'], classes[:, None, None] + 1, -1),
                             rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(kept['class_prob'], full['class_prob'])


@pytest.mark.slow
def test_memory_plan_keeps_one_pass_alive(optimized_compiles):
  """XLA's plan: the step's largest part needs less than the one-function step's largest scale
  alone (both orientations), far less than all scales in one function; every pass writes into
  the donated running sums."""
  model, variables = _model_and_variables()
  b, hb, wb = 2, 48, 64
  sd = jax.ShapeDtypeStruct
  batch = (sd((b, hb, wb, 3), jnp.uint8), sd((b, 2), jnp.int32), sd((b, NUM_CLASSES), jnp.float32))
  scales = (1.0, 0.5, 1.5, 2.0)

  def temps(scales, unrolled):
    step = infer.make_infer_step(infer.make_predict_fn(model, scales, True, 8, 'nearest',
                                                       unrolled), (0.5,) * 3, (0.25,) * 3, 0.34, 2)
    return infer.memory_plan(step, variables, *batch)

  seq, one, largest = temps(scales, False), temps(scales, True), temps((2.0,), True)
  passes = [r for r in seq if r['part'].startswith('pass')]
  assert [r['part'] for r in passes] == ['pass scale 1', 'pass scale 0.5', 'pass scale 1.5',
                                         'pass scale 2']
  sums = 4 * b * 2 * (hb * wb * 2 * 2 + NUM_CLASSES)  # seg, cam: the 2 kept classes; prob: all
  assert all(r['alias'] == sums and 0 <= r['output'] - sums < 64 for r in passes)  # + a tuple
  peak = max(r['temp'] for r in seq)
  assert peak < max(r['temp'] for r in largest) < max(r['temp'] for r in one)
  assert max(seq, key=lambda r: r['temp'])['part'] == 'pass scale 2'


def test_host_seed_matches_jax():
  rng = np.random.default_rng(9)
  q = rng.integers(0, 256, (6, 7, 3)).astype(np.uint8)
  for bg_power in (2.0, 1.0):
    ref = np.asarray(infer.seed_with_background(jnp.asarray(infer.dequantize(q))[None], bg_power))
    np.testing.assert_allclose(infer.host_seed(q, bg_power), ref[0], rtol=1e-6, atol=1e-7)
  labels = infer.host_seed_labels(q, [4, 0, 2])
  lut = np.array([0, 5, 1, 3])
  np.testing.assert_array_equal(labels, lut[np_seed_label_map(infer.dequantize(q)[None])[0]])
  empty = infer.host_seed(np.zeros((4, 5, 0), np.uint8))
  assert empty.shape == (4, 5, 1) and np.all(empty == 1.0)
  assert not infer.host_seed_labels(np.zeros((4, 5, 0), np.uint8), []).any()


class _Progress:

  def __init__(self):
    self.updates = []

  def update(self, n):
    self.updates.append(n)


class _SizedSplit:
  """The splits.py interface over images of different sizes."""

  def __init__(self, sizes, seed=0):
    rng = np.random.default_rng(seed)
    self.images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    self.ids = [f'im{i}' for i in range(len(sizes))]
    self.labels = (rng.random((len(sizes), NUM_CLASSES)) < 0.5).astype(np.float32)
    self.labels[0] = 0.0  # no label: no seed channel
    self.labels[1] = 1.0  # every class
    self.has_masks = False

  def __len__(self):
    return len(self.ids)

  def image(self, i):
    return self.images[i]

  def size(self, i):
    return self.images[i].shape[:2]


def test_plan_batches_buckets_and_errors():
  split = _SizedSplit([(20, 24), (32, 40), (17, 9), (24, 24), (30, 33)])
  plan = infer.plan_batches(split, range(5), [(32, 40), (24, 24)], 2)
  assert plan == [((32, 40), [1, 4]), ((24, 24), [0, 2]), ((24, 24), [3])]
  assert infer.plan_batches(split, [2, 3], (), 4) == [((24, 24), [2, 3])]  # auto: the largest
  assert infer.pick_bucket((25, 10), [(24, 24), (40, 12), (32, 40)]) == 1  # smallest area
  with pytest.raises(ValueError, match=r"'im1' is 32x40.*infer\.buckets"):
    infer.plan_batches(split, range(5), [(24, 24), (40, 32)], 2)


def _batch_dependent_step(variables, images, valid_hw, labels):
  """A prediction step whose every output depends on the whole batch and the image's place in
  it, as XLA:CPU's rounding can."""
  del variables, valid_hw, labels
  b, h, w, _ = images.shape
  whole = int(images.astype(np.int64).sum()) % 97
  pred = ((np.arange(b)[:, None, None] + whole) % 200 + np.zeros((b, h, w))).astype(np.uint8)
  return dict(class_prob=np.full((b, 3), whole, np.float32), pred=pred,
              keep=np.zeros((b, 3), bool))


def test_run_split_todo_runs_the_uninterrupted_batches():
  """A resumed run (todo: the images left) gives each image an uninterrupted run's batch and
  place, so the same values; it yields and counts only the todo images."""
  split = _SizedSplit([(20, 24), (24, 24), (17, 9), (24, 20), (16, 16), (24, 24), (9, 9)])
  run = lambda **kw: {i: out['m'] for i, _, out in infer.run_split(
      _batch_dependent_step, {'m': None}, split, range(7), [(24, 24)], 3, with_labels=False,
      **kw)}
  whole = run()
  progress = _Progress()
  todo = [2, 3, 6]  # batches [0, 1, 2], [3, 4, 5], [6]: 0, 1, 4 and 5 were done before a kill
  resumed = run(todo=todo, progress=progress)
  assert sorted(resumed) == todo and sum(progress.updates) == len(todo)
  for i in todo:
    np.testing.assert_array_equal(resumed[i]['pred'], whole[i]['pred'])
    np.testing.assert_array_equal(resumed[i]['class_prob'], whole[i]['class_prob'])
  # Without the whole list, the same images in other batches: other values (what was wrong).
  alone = {i: out['m'] for i, _, out in infer.run_split(
      _batch_dependent_step, {'m': None}, split, todo, [(24, 24)], 3, with_labels=False)}
  assert any(not np.array_equal(alone[i]['pred'], whole[i]['pred']) for i in todo)


@pytest.mark.slow
def test_run_split_compiles_once_per_bucket():
  """Seven sizes, two buckets, two scales unrolled: two compilations of the step, no more."""
  _, variables = _model_and_variables()
  sizes = [(20, 24), (24, 24), (17, 9), (32, 40), (30, 33), (24, 16), (25, 40)]
  split = _SizedSplit(sizes)
  mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
  step = infer.make_infer_step(_predict(SCALES, True, 8), mean, std, num_kept=NUM_CLASSES)
  mesh = parallel.make_mesh()
  sharding = parallel.batch_sharding(mesh)
  progress = _Progress()
  seen = []
  replicated = parallel.replicate(variables, mesh)
  for i, image, out in infer.run_split(
      step, {'a': replicated, 'b': replicated}, split, range(7),
      [(24, 24), (32, 40)], 2, with_labels=True, sharding=sharding, progress=progress):
    seen.append(i)
    h, w = sizes[i]
    np.testing.assert_array_equal(image, split.image(i))
    classes = np.flatnonzero(split.labels[i])
    for res in out.values():
      np.testing.assert_array_equal(res['classes'], classes)
      for key in ('cam', 'seg'):
        assert res[key].dtype == np.float32 and res[key].shape == (h, w, len(classes))
      if len(classes):  # kept softmax channels, max-normalised: each peak is 1 / (1 + 1e-5 / max)
        np.testing.assert_allclose(res['seg'].max(axis=(0, 1)), 1.0, rtol=1e-3)
    np.testing.assert_array_equal(out['a']['seg'], out['b']['seg'])  # same model, same result
  assert sorted(seen) == list(range(7)) and sum(progress.updates) == 7
  assert step._cache_size() == 2  # buckets x (one function with every scale unrolled)

  # Predictions (threshold on the class probability) of a few images of one bucket.
  pred_step = infer.make_infer_step(_predict(SCALES, True, 8), mean, std, class_threshold=0.5)
  outs = list(infer.run_split(pred_step, {'a': variables}, split, [0, 2, 5], [(24, 24)], 2,
                              with_labels=False))
  assert pred_step._cache_size() == 1
  for i, _, out in outs:
    res = out['a']
    assert res['pred'].shape == sizes[i] and res['pred'].dtype == np.uint8
    np.testing.assert_array_equal(res['keep'], np.flatnonzero(res['class_prob'] >= 0.5))
    assert set(np.unique(res['pred']).tolist()) <= {0} | set((res['keep'] + 1).tolist())


@pytest.mark.slow  # over 5 s; the module keeps fast tests
def test_array_split_runs_without_buckets():
  """The synthetic demo's splits (one size, no buckets configured): one bucket, no padding."""
  _, variables = _model_and_variables()
  rng = np.random.default_rng(10)
  images = rng.integers(0, 256, (BATCH, SIZE, SIZE, 3), dtype=np.uint8)
  labels = np.eye(BATCH, NUM_CLASSES, dtype=np.float32)
  split = splits.ArraySplit(['a', 'b', 'c', 'd'], images, labels)
  step = infer.make_infer_step(_predict(SCALES, True), (0.5,) * 3, (0.25,) * 3, num_kept=1)
  outs = list(infer.run_split(step, {'m': variables}, split, range(BATCH), (), BATCH,
                              with_labels=True))
  x = (images.astype(np.float32) / 255.0 - 0.5) / 0.25
  ref = jax.device_get(_predict(SCALES, True)(variables, jnp.asarray(x)))  # shapes seen before
  assert sorted(i for i, _, _ in outs) == list(range(BATCH))
  for i, _, out in outs:
    ref_seed = np_normalized_scores(ref['cam'][i:i + 1], labels[i:i + 1])[0][..., [i]]
    np.testing.assert_allclose(out['m']['cam'], ref_seed, rtol=1e-5, atol=1e-6)


def _pass_flops(step, variables, images, valid_hw, labels):
  """XLA's FLOPs of each scale's pass of `step`, after its optimisations (dead code dropped)."""
  flops = []
  for name, jitted, args, _ in step.plan_parts(variables, images, valid_hw, labels):
    if name.startswith('pass'):
      flops.append(compiled_flops(jitted.lower(*args).compile()))
  return flops


@pytest.mark.slow  # compiles steps of its own; the module keeps fast tests
def test_cam_only_seeds_are_the_full_steps_cam_without_its_segmentation_head():
  """heads=('cam',), the plain-CAM baseline's seeds: the same CAM seeds and class probabilities
  as the full step, no seg, and XLA drops the segmentation head from every pass."""
  _, variables = _model_and_variables()
  rng = np.random.default_rng(11)
  images = rng.integers(0, 256, (BATCH, SIZE, SIZE, 3), dtype=np.uint8)
  labels = np.zeros((BATCH, NUM_CLASSES), np.float32)
  labels[np.arange(BATCH), [0, 1, 2, 3]] = 1.0
  labels[0, 4] = 1.0
  split = splits.ArraySplit([f'i{i}' for i in range(BATCH)], images, labels)
  mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
  full = infer.make_infer_step(_predict(SCALES, True), mean, std, num_kept=2)
  cam_only = infer.make_infer_step(_predict(SCALES, True), mean, std, num_kept=2, heads=('cam',))
  outs = list(infer.run_split({'full': full, 'cam': cam_only}, {'full': variables,
                                                                'cam': variables},
                              split, range(BATCH), (), BATCH, with_labels=True))
  assert sorted(i for i, _, _ in outs) == list(range(BATCH))
  for _, _, out in outs:
    assert set(out['full']) == {'class_prob', 'classes', 'cam', 'seg'}
    assert set(out['cam']) == {'class_prob', 'classes', 'cam'}
    np.testing.assert_array_equal(out['cam']['classes'], out['full']['classes'])
    for key in ('cam', 'class_prob'):  # other programs, so float rounding may differ
      ref = out['full'][key]
      np.testing.assert_allclose(out['cam'][key], ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
  args = (variables, images, np.tile(np.array([[SIZE, SIZE]], np.int32), (BATCH, 1)), labels)
  flops_full, flops_cam = _pass_flops(full, *args), _pass_flops(cam_only, *args)
  assert len(flops_full) == len(flops_cam) == len(SCALES)
  for f, c in zip(flops_full, flops_cam):  # the heads are about half the demo network's forward
    assert c < 0.8 * f, (c, f)
  with pytest.raises(ValueError, match='need the segmentation head'):
    infer.make_infer_step(_predict(SCALES, True), mean, std, heads=('cam',))
  with pytest.raises(ValueError, match='heads must be some of'):
    infer.make_infer_step(_predict(SCALES, True), mean, std, num_kept=2, heads=('edges',))


class _CountingStep:
  """_batch_dependent_step that sleeps a little and records when each call ran."""

  def __init__(self, fail_at=None):
    self.lock = threading.Lock()
    self.calls = []  # [(batch shape, start, end)] in the order the calls began
    self.fail_at = fail_at

  def __call__(self, variables, images, valid_hw, labels):
    t0 = time.perf_counter()
    time.sleep(0.05)  # long enough for a second stream to start meanwhile
    with self.lock:
      self.calls.append((images.shape, t0, time.perf_counter()))
      n = len(self.calls)
    if n == self.fail_at:
      raise RuntimeError(f'batch {n} failed')
    return _batch_dependent_step(variables, images, valid_hw, labels)

  def overlapping(self, k):
    """How many other calls ran at some time during call k."""
    _, a0, a1 = self.calls[k]
    return sum(b0 < a1 and a0 < b1 for j, (_, b0, b1) in enumerate(self.calls) if j != k)


def test_run_split_streams_give_one_streams_items_in_order():
  """streams=2: the same items as one stream, in the same order (the same batches); batches
  overlap, but the first of each bucket runs alone (its programs compile once); a failing batch's
  error reaches the consumer."""
  sizes = [(20, 24), (24, 24), (17, 9), (24, 20), (16, 16), (24, 24), (9, 9), (30, 30), (28, 30),
           (30, 25), (29, 29), (30, 30)]
  split = _SizedSplit(sizes)
  buckets = [(24, 24), (32, 32)]

  def run(step, **kw):
    return [(i, out['m']) for i, _, out in infer.run_split(
        step, {'m': None}, split, range(len(sizes)), buckets, 2, with_labels=False, **kw)]

  one = run(_batch_dependent_step)
  step = _CountingStep()
  two = run(step, streams=2)
  assert [i for i, _ in two] == [i for i, _ in one]
  for (_, a), (_, b) in zip(one, two):
    np.testing.assert_array_equal(a['pred'], b['pred'])
    np.testing.assert_array_equal(a['class_prob'], b['class_prob'])
  step.calls.sort(key=lambda c: c[1])
  shapes = [c[0] for c in step.calls]
  firsts = [k for k, s in enumerate(shapes) if k == 0 or s != shapes[k - 1]]
  assert len(firsts) == 2  # one per bucket
  assert all(step.overlapping(k) == 0 for k in firsts)
  assert any(step.overlapping(k) for k in range(len(shapes)))  # the others ran two at a time
  todo = [3, 9]
  resumed = {i: out['m'] for i, _, out in infer.run_split(
      _CountingStep(), {'m': None}, split, range(len(sizes)), buckets, 2, with_labels=False,
      todo=todo, streams=2)}
  assert sorted(resumed) == todo
  for i, a in one:
    if i in todo:
      np.testing.assert_array_equal(resumed[i]['pred'], a['pred'])
  with pytest.raises(RuntimeError, match='batch 3 failed'):
    run(_CountingStep(fail_at=3), streams=2)


@pytest.mark.slow  # compiles steps of its own; the module keeps fast tests
def test_run_split_streams_are_bit_identical_on_the_real_step():
  _, variables = _model_and_variables()
  split = _SizedSplit([(24, 24)] * 6, seed=3)
  step = infer.make_infer_step(_predict(SCALES, True, 8), (0.5,) * 3, (0.25,) * 3,
                               num_kept=NUM_CLASSES)
  runs = [list(infer.run_split(step, {'m': variables}, split, range(6), (), 2, with_labels=True,
                               streams=n)) for n in (1, 2)]
  assert [i for i, _, _ in runs[0]] == [i for i, _, _ in runs[1]] == list(range(6))
  for (_, _, a), (_, _, b) in zip(*runs):
    for key in ('cam', 'seg', 'class_prob'):
      np.testing.assert_array_equal(a['m'][key], b['m'][key])
