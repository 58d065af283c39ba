"""Tests for recurseed_jax.crf: the CRF, the pool, the bounded feed, resuming after a kill."""

import os
import signal
import subprocess
import sys
import threading
import time

import ml_collections
import numpy as np
import pydensecrf.densecrf as dcrf
import pytest

from recurseed_jax import crf
from recurseed_jax import io_utils

PARAMS = dict(iterations=10, bi_weight=4, bi_xy_std=67, bi_rgb_std=3, pos_weight=3, pos_xy_std=1)


def _scene(seed=0, h=48, w=64):
  """Three flat-coloured regions with pixel noise, and a noisy, oddly smoothed unary."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:h, :w]
  gt = np.zeros((h, w), np.int64)
  gt[(yy - h // 2) ** 2 + (xx - w // 3) ** 2 < (h // 3) ** 2] = 1
  gt[(xx > 2 * w // 3) & (yy > h // 5) & (yy < 4 * h // 5)] = 2
  colours = np.array([[30, 120, 40], [200, 40, 40], [40, 60, 210]], np.float32)
  image = np.clip(colours[gt] + rng.normal(0, 2, (h, w, 3)), 0, 255).astype(np.uint8)
  probs = np.full((h, w, 3), 0.2)
  probs[yy, xx, gt] = 0.6
  probs = probs + rng.uniform(0, 1.0, probs.shape)
  probs = (probs + np.roll(probs, 3, axis=1) + np.roll(probs, -2, axis=0)) / 3  # shifted blur
  return image, probs, gt


def _miou(pred, gt, n):
  return np.mean([((pred == c) & (gt == c)).sum() / ((pred == c) | (gt == c)).sum()
                  for c in range(n)])


def test_params_from_config():
  cfg = ml_collections.ConfigDict(dict(PARAMS, workers=2))
  params = crf.crf_params_from_config(cfg)
  assert params == {k: float(v) for k, v in PARAMS.items()} | {'iterations': 10}
  assert isinstance(params['iterations'], int)


def test_dense_crf_beats_unary_argmax():
  image, probs, gt = _scene()
  q = crf.dense_crf(image, probs, **PARAMS)
  assert q.shape == probs.shape and q.dtype == np.float32
  np.testing.assert_allclose(q.sum(-1), 1.0, atol=1e-4)
  before = _miou(probs.argmax(-1), gt, 3)
  after = _miou(q.argmax(-1), gt, 3)
  assert after > before + 0.1 and after > 0.95, (before, after)
  # Unnormalised scores and exact zeros are fine (clipped inside).
  scaled = crf.dense_crf(image, 5.0 * probs * (probs > 0.3), **PARAMS)
  assert np.all(np.isfinite(scaled))


def test_dense_crf_is_the_authors_unary_and_kernels():
  """The authors' DenseCRF (core/refinements/densecrf.py), re-derived: unary_from_softmax of the
  scores as given (clip 1e-5, no renormalisation), Gaussian then bilateral kernel, argmax."""
  from pydensecrf import utils
  image, probs, _ = _scene(3)
  probs = (probs / probs.sum(-1, keepdims=True)).astype(np.float32)
  probs[:5] = 0.0  # exact zeros: the 1e-5 clip decides these rows
  probs[5:10, :, 0] *= 1e-4
  h, w, n = probs.shape
  d = dcrf.DenseCRF2D(w, h, n)
  d.setUnaryEnergy(np.ascontiguousarray(utils.unary_from_softmax(probs.transpose(2, 0, 1))))
  d.addPairwiseGaussian(sxy=PARAMS['pos_xy_std'], compat=PARAMS['pos_weight'])
  d.addPairwiseBilateral(sxy=PARAMS['bi_xy_std'], srgb=PARAMS['bi_rgb_std'],
                         rgbim=np.ascontiguousarray(image), compat=PARAMS['bi_weight'])
  ref = np.asarray(d.inference(PARAMS['iterations']), np.float32).reshape(n, h, w)
  ours = crf.dense_crf(image, probs, **PARAMS)
  np.testing.assert_allclose(ours.transpose(2, 0, 1), ref, rtol=1e-6, atol=1e-7)


def test_crf_image_denormalized_as_the_authors():
  """Their CRF image: Normalize (float32 (x / 255 - m) / s), then Denormalize (float64, then
  truncated to uint8)."""
  rng = np.random.default_rng(4)
  image = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
  image[0, 0] = [0, 128, 255]
  mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
  ref = np.zeros_like(image)
  for idx in np.ndindex(image.shape[:2]):
    for c in range(3):
      norm = (np.float32(image[idx][c]) / np.float32(255.0) - np.float32(mean[c])) / np.float32(
          std[c])  # float32, as their numpy Normalize
      ref[idx][c] = int((float(norm) * std[c] + mean[c]) * 255.0)  # int() truncates
  out = crf.crf_image(image, 'denormalized', mean, std)
  np.testing.assert_array_equal(out, ref)
  assert (out.astype(int) - image).min() >= -1 and (out < image).mean() > 0.2  # a level darker
  np.testing.assert_array_equal(crf.crf_image(image, 'decoded'), image)
  with pytest.raises(ValueError, match='crf.image'):
    crf.crf_image(image, 'raw')


def test_crf_label_map_labels():
  image, probs, gt = _scene()
  labels = np.array([0, 7, 15])
  out = crf.crf_label_map(image, probs, labels, **PARAMS)
  assert out.dtype == np.uint8 and out.shape == gt.shape
  assert set(np.unique(out).tolist()) <= {0, 7, 15}
  assert (out == labels[gt]).mean() > 0.97
  # Fewer than two labels: all background without a CRF (the authors' rule), even a class.
  for single in ([0], [7], []):
    empty = crf.crf_label_map(image, probs[..., :len(single)], single, **PARAMS)
    assert empty.shape == gt.shape and not empty.any()
  # Background need not be a label (the segmenter keeps only labels above its threshold).
  out = crf.crf_label_map(image, probs[..., 1:], [7, 15], **PARAMS)
  assert set(np.unique(out).tolist()) <= {7, 15}
  with pytest.raises(ValueError, match='L = 1 labels'):
    crf.crf_label_map(image, probs, [3], **PARAMS)


def _items(n, bad=None):
  for i in range(n):
    image, probs, _ = _scene(seed=i, h=24, w=32)
    labels = [0, i % 20 + 1, 20 - i % 20]
    if i == bad:
      probs = probs[..., :2]  # wrong channel count -> ValueError inside the worker
    yield f'img_{i:03d}', image, probs.astype(np.float32), labels


def _tmp_files(folder):
  return [n for n in os.listdir(folder) if '.tmp' in n]


def test_run_crf_pool_resume_and_errors(tmp_path):
  out = tmp_path / 'crf'
  out.mkdir()
  # Another live writer's temp file (a second process of a multi-host run, writing its share of
  # the images into the same folder): run_crf must leave it alone, not sweep it.
  other = os.path.basename(io_utils.temp_path_for(out / 'img_002.png')).replace(
      f'-{os.getpid()}', f'-{os.getpid() + 1}')
  (out / other).write_bytes(b'half a png')
  ahead = []

  threads = set()

  def watched(items):  # how far the generator runs ahead of the PNGs on disk, and where
    for i, item in enumerate(items):
      threads.add(threading.get_ident())
      ahead.append(i - len([n for n in os.listdir(out) if n.endswith('.png')]))
      yield item

  stats = crf.run_crf(watched(_items(7)), str(out), params=PARAMS, workers=2, queue_size=1)
  # 2 * workers in flight, queue_size queued, one in the producer's hand, one being submitted.
  assert max(ahead) <= 2 * 2 + 1 + 2
  assert threads and threading.get_ident() not in threads  # produced on a background thread
  assert stats['written'] == 7 and stats['skipped'] == 0 and stats['seconds'] > 0
  assert _tmp_files(out) == [other] and (out / other).read_bytes() == b'half a png'
  names = sorted(n for n in os.listdir(out) if n != other)
  assert names == [f'img_{i:03d}.png' for i in range(7)]
  mask = io_utils.load_mask_png(out / 'img_003.png')
  assert set(np.unique(mask).tolist()) <= {0, 4, 17}
  mtimes = {n: os.stat(out / n).st_mtime_ns for n in names}

  stats = crf.run_crf(_items(7), str(out), params=PARAMS, workers=2)
  assert stats['written'] == 0 and stats['skipped'] == 7
  assert {n: os.stat(out / n).st_mtime_ns for n in names} == mtimes

  # Inline path matches the pool's output.
  inline = tmp_path / 'inline'
  crf.run_crf(_items(2), str(inline), params=PARAMS, workers=0)
  for n in os.listdir(inline):
    np.testing.assert_array_equal(io_utils.load_mask_png(inline / n),
                                  io_utils.load_mask_png(out / n))

  bad_out = tmp_path / 'bad'
  with pytest.raises(RuntimeError, match='img_004'):
    crf.run_crf(_items(6, bad=4), str(bad_out), params=PARAMS, workers=2)
  assert not os.path.exists(bad_out / 'img_004.png')
  assert _tmp_files(out) == [other] and not _tmp_files(bad_out)
  with pytest.raises(RuntimeError, match='img_001'):
    crf.run_crf(_items(3, bad=1), str(tmp_path / 'bad0'), params=PARAMS, workers=0)


_KILLED_RUN = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[2])
from test_crf import PARAMS, _items
from recurseed_jax import crf

def slow(items):  # a slow producer, like a device making seeds
  for item in items:
    time.sleep(0.15)
    yield item

if __name__ == '__main__':
  crf.run_crf(slow(_items(40)), sys.argv[3], params=PARAMS, workers=1, queue_size=2)
"""


def test_killed_crf_resumes_without_rewriting(tmp_path):
  """SIGKILL mid-run: no partial PNG under a final name; the rerun writes only what is missing."""
  out = tmp_path / 'masks'
  script = tmp_path / 'killed_run.py'
  script.write_text(_KILLED_RUN)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.Popen([sys.executable, str(script), root, os.path.join(root, 'tests'),
                           str(out)], start_new_session=True, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
      if out.is_dir() and len([n for n in os.listdir(out) if n.endswith('.png')]) >= 4:
        break
      time.sleep(0.05)
    assert proc.poll() is None, 'the run ended before it could be killed'
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)  # the run and its pool worker, mid-write or not
    proc.wait()
  finished = sorted(n for n in os.listdir(out) if n.endswith('.png'))
  assert 4 <= len(finished) < 40
  for name in finished:  # every final name holds a whole PNG
    assert io_utils.load_mask_png(out / name).shape == (24, 32)
  mtimes = {n: os.stat(out / n).st_mtime_ns for n in finished}

  stats = crf.run_crf(_items(40), str(out), params=PARAMS, workers=0)
  assert stats['skipped'] == len(finished) and stats['written'] == 40 - len(finished)
  assert {n: os.stat(out / n).st_mtime_ns for n in finished} == mtimes
  pngs = sorted(n for n in os.listdir(out) if not io_utils.is_temp_name(n))
  assert pngs == [f'img_{i:03d}.png' for i in range(40)]
  # Only the killed run's temp files (its pool worker's) can be left, for launch.py to sweep;
  # none of the rerun's (workers=0: written by this process).
  assert not [n for n in _tmp_files(out) if n.endswith(f'-{os.getpid()}')], _tmp_files(out)
