"""Numerical edge cases: empty label vectors, all-zero CAMs, images under the crop, one-pixel
objects, and a NaN batch, which the guard skips and reports with its step.

Elsewhere: inference of an image with no label (tests/test_infer.py::
test_run_split_compiles_once_per_bucket), CRF of an image with no kept class
(tests/test_crf.py::test_crf_label_map_keys), NaN batches in a subprocess that is resumed
(tests/test_resume.py::test_nonfinite_step_is_skipped_and_reported).
"""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from data_pipeline import pipeline
from recurseed_jax import confusion
from recurseed_jax import infer
from recurseed_jax import train
from recurseed_jax.method import certainty
from recurseed_jax.method import seeds
import reference

NUM_CLASSES, CROP, BATCH = 5, 32, 4


def _edge_batch():
  """Image 0: no label, all background; image 1: one class, one pixel; 2, 3 as usual."""
  b = reference.fake_batch(0, BATCH, CROP, NUM_CLASSES)
  b['label'][:2] = 0.0
  b['mask'][:2][b['valid'][:2]] = 0
  b['mask'][1, 7, 9] = 3
  b['label'][1, 2] = 1.0
  return b


@pytest.mark.slow
def test_train_step_on_edge_images_then_a_nan_batch(tmp_path, capsys):
  """CertainMix from step 0 (it pastes the empty and the one-pixel image too), SCG refinement."""
  cfg = reference.default_config(**{
      'model.width': 8, 'data.crop_size': CROP, 'train.batch_size': BATCH, 'train.steps': 3,
      'train.log_every': 1, 'train.checkpoint_every': 3, 'rs.cam_only_steps': 1,
      'mix.start_step': 0, 'train.tensorboard': False})
  nan = reference.fake_batch(1, BATCH, CROP, NUM_CLASSES)
  nan['image'][2, 5, 5, 1] = np.nan
  feed = [_edge_batch(), nan, _edge_batch()]
  workdir = str(tmp_path / 'run')
  train.train(cfg, workdir, NUM_CLASSES, data_iter_fn=lambda start: iter(feed[start:]))
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    logs = [json.loads(line) for line in f]
  assert [m['step'] for m in logs] == [1, 2, 3]
  for m in (logs[0], logs[2]):  # the edge images: finite everything, nothing skipped
    assert all(np.isfinite(v) for v in m.values()), m
  assert [m['nonfinite'] for m in logs] == [0, 1, 1]
  assert 'step 2: non-finite loss or gradient, update skipped' in capsys.readouterr().err


def test_all_zero_cam_gives_a_zero_seed_not_nan():
  cam = np.zeros((2, 4, 4, NUM_CLASSES), np.float32)
  cam[1, ..., 0] = -3.0  # negative everywhere: zero after the ReLU
  labels = np.ones((2, NUM_CLASSES), np.float32)
  seed = np.asarray(seeds.cam_seed(jnp.asarray(cam), jnp.asarray(labels)))
  assert np.isfinite(seed).all() and not seed.any()
  scores = np.asarray(infer.normalized_scores(jnp.asarray(cam), jnp.asarray(labels)))
  assert np.isfinite(scores).all() and not scores.any()
  hard = np.asarray(certainty.hard_labels(jnp.asarray(seed)))
  assert (hard == 0).all()  # no class scores anywhere: certain background
  q = np.zeros((4, 4, 2), np.uint8)  # quantised seeds of two kept classes, all zero
  assert (infer.host_seed_labels(q, [0, 3]) == 0).all()


def test_image_smaller_than_the_crop_with_a_one_pixel_object():
  images = np.full((2, 12, 20, 3), 128, np.uint8)
  masks = np.zeros((2, 12, 20), np.uint8)
  masks[0, 6, 11] = 4  # one pixel
  labels = np.zeros((2, NUM_CLASSES), np.float32)
  labels[0, 3] = 1.0
  ds = pipeline.train_dataset(images, masks, labels, batch_size=2, crop_size=CROP, flip=False,
                              mean=(0.5,) * 3, std=(0.25,) * 3, seed=0)
  b = next(pipeline.as_numpy_iterator(ds))
  for i in range(2):
    assert b['valid'][i].sum() == 12 * 20  # the whole image, the rest padding
    pad = ~b['valid'][i]
    assert (b['mask'][i][pad] == 255).all() and (b['image'][i][pad] == 0).all()
  k = int(np.flatnonzero(b['index'] == 0)[0])
  assert (b['mask'][k] == 4).sum() == 1 and b['label'][k, 3] == 1.0


def test_scores_of_a_one_pixel_object_and_of_absent_classes():
  gt = np.zeros((10, 10), np.uint8)
  gt[4, 4] = 2
  pred = np.zeros_like(gt)
  conf = confusion.confusion_matrix(pred, gt, NUM_CLASSES + 1)
  s = confusion.scores(conf)
  assert s['iou'][2] == 0.0 and np.isnan(s['iou'][3])  # missed; absent from both: left out
  assert np.isfinite(s['miou']) and s['miou'] == pytest.approx(99 / 100 / 2)
  pred[4, 4] = 2
  assert confusion.scores(confusion.confusion_matrix(pred, gt, NUM_CLASSES + 1))['miou'] == 1.0
