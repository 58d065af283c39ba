"""Relation labels against IRN's cam_to_ir_label re-derived here (numpy + pydensecrf), and the
label reduction against PIL's nearest resize (IRN's pil_rescale)."""

import numpy as np
import pytest

dcrf = pytest.importorskip('pydensecrf.densecrf')

from recurseed_jax import relation_labels
from recurseed_jax.method import affinity


def _irn_label_crf(image, hard, n_labels, gt_prob=0.7, iterations=10):
  """crf_inference_label with its unary written out: -log(gt_prob) on the given label,
  -log((1 - gt_prob) / (n - 1)) on the others."""
  h, w = hard.shape
  unary = np.full((n_labels, h * w), -np.log((1 - gt_prob) / (n_labels - 1)), np.float32)
  unary[hard.ravel(), np.arange(h * w)] = -np.log(gt_prob)
  crf = dcrf.DenseCRF2D(w, h, n_labels)
  crf.setUnaryEnergy(unary)
  crf.addPairwiseGaussian(sxy=3, compat=3)
  crf.addPairwiseBilateral(sxy=50, srgb=5, rgbim=np.ascontiguousarray(image), compat=10)
  return np.argmax(np.array(crf.inference(iterations)).reshape(n_labels, h, w), axis=0)


def _irn_relation_labels(image, scores, classes, fg_thres=0.30, bg_thres=0.05, iterations=10):
  keys = np.concatenate([[0], np.asarray(classes) + 1])
  cams = scores.transpose(2, 0, 1)
  maps = []
  for thres in (fg_thres, bg_thres):
    padded = np.concatenate([np.full((1,) + cams.shape[1:], thres), cams])
    hard = np.argmax(padded, axis=0)
    maps.append(keys[_irn_label_crf(image, hard, len(keys), iterations=iterations)])
  fg, bg = maps
  conf = fg.copy()
  conf[fg == 0] = 255
  conf[bg + fg == 0] = 0
  return conf


def _scene(seed, h=48, w=64):
  rng = np.random.RandomState(seed)
  yy, xx = np.mgrid[:h, :w]
  blobs = [np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * r * r))
           for cy, cx, r in [(16, 20, 8), (32, 46, 6)]]
  image = np.full((h, w, 3), 90, np.float64)
  image[blobs[0] > 0.2] = (200, 40, 40)
  image[blobs[1] > 0.3] = (40, 190, 60)
  image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
  scores = np.stack(blobs, axis=-1) + 0.03 * rng.rand(h, w, 2)
  return image, (scores / scores.max(axis=(0, 1))).astype(np.float32)


@pytest.mark.parametrize('seed', [0, 1])
def test_relation_labels_match_cam_to_ir_label(seed):
  image, scores = _scene(seed)
  classes = np.array([6, 13])
  got = relation_labels.relation_label_map(image, scores, classes)
  want = _irn_relation_labels(image, scores, classes)
  assert got.dtype == np.uint8 and got.shape == image.shape[:2]
  assert set(np.unique(want)) == {0, 7, 14, 255}, 'the scene should give every kind of label'
  np.testing.assert_array_equal(got, want)


def test_thresholds_and_crf_parameters_reach_the_result():
  image, scores = _scene(2)
  classes = np.array([6, 13])
  base = relation_labels.relation_label_map(image, scores, classes)
  wide = relation_labels.relation_label_map(image, scores, classes, conf_fg=0.1)
  assert (wide == 7).sum() > (base == 7).sum()
  moved = relation_labels.relation_label_map(image, scores, classes, conf_bg=0.2, iterations=3)
  assert (moved != base).any()
  np.testing.assert_array_equal(
      moved, _irn_relation_labels(image, scores, classes, bg_thres=0.2, iterations=3))


def test_no_kept_class_is_all_background_and_bad_input_is_named():
  image, scores = _scene(3)
  out = relation_labels.relation_label_map(image, scores[..., :0], [])
  assert out.shape == image.shape[:2] and not out.any()
  with pytest.raises(ValueError, match='2 channels but 1 classes'):
    relation_labels.relation_label_map(image, scores, [3])
  with pytest.raises(ValueError, match='image must be uint8'):
    relation_labels.relation_label_map(image.astype(np.float32), scores, [3, 4])
  with pytest.raises(ValueError, match='scores must be'):
    relation_labels.relation_label_map(image, scores[:10], [3, 4])


@pytest.mark.parametrize('shape, scale', [((512, 512), 0.25), ((375, 500), 0.25),
                                          ((333, 417), 0.25), ((58, 101), 0.3)])
def test_reduce_label_matches_pil_nearest(shape, scale):
  image_module = pytest.importorskip('PIL.Image')
  label = np.random.RandomState(shape[0]).randint(0, 256, shape).astype(np.uint8)
  size = (int(np.round(shape[0] * scale)), int(np.round(shape[1] * scale)))
  want = np.asarray(image_module.fromarray(label).resize(size[::-1], image_module.NEAREST))
  got = affinity.reduce_label(label, scale)
  np.testing.assert_array_equal(got, want)
  if shape == (512, 512):
    np.testing.assert_array_equal(got, label[2::4, 2::4])  # rows / columns 2, 6, 10, ...
