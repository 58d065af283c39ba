"""Tests for recurseed_jax.method against slow, obvious numpy references."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recurseed_jax import method
from recurseed_jax.method import mix as mix_lib
from reference import np_resize

RTOL, ATOL = 1e-4, 1e-5


# --- numpy references (loops on purpose) --------------------------------------


def np_cam_seed(cam, labels, eps=1e-5):
  out = np.zeros(cam.shape, np.float64)
  b, _, _, c = cam.shape
  for i in range(b):
    for k in range(c):
      if labels[i, k] > 0.5:
        a = np.maximum(cam[i, :, :, k].astype(np.float64), 0)
        out[i, :, :, k] = a / (a.max() + eps)
  return out


def np_minmax(v, eps):
  lo, hi = v.min(), v.max()
  return (v - lo) / (hi - lo + eps)


def np_scg(feats, seed, first_th=0.5, second_th=0.1, fg_th=0.3, bg_th=0.05,
           iteration=1, second_weight=1.0, eps=1e-10):
  """METHOD.md's SCG with explicit loops: every column normalisation spelt out."""
  b, h, w, c = seed.shape
  hw = h * w

  def colnorm(m):
    m = m.copy()
    for q in range(hw):
      m[:, q] = m[:, q] / (m[:, q].sum() + eps)
    return m

  out = np.zeros(seed.shape, np.float64)
  for i in range(b):
    aff = np.zeros((hw, hw))
    for f in feats:
      f = f[i].reshape(hw, -1).astype(np.float64)
      n = np.zeros_like(f)
      for p in range(hw):
        n[p] = f[p] / (np.sqrt(np.sum(f[p] ** 2)) + eps)
      s = np.zeros((hw, hw))
      for p in range(hw):
        for q in range(hw):
          v = max(float(np.dot(n[p], n[q])), 0.0)
          s[p, q] = v if v >= first_th else 0.0
      s1 = colnorm(s)
      base = s.copy()
      for p in range(hw):
        base[p, p] = 0.0
      base = colnorm(base)
      s2 = base
      for _ in range(iteration):
        s2 = colnorm(s2 @ base)
      s2[s2 < second_th / hw] = 0.0
      aff += colnorm(np.maximum(s1, second_weight * s2))
    for q in range(hw):
      aff[:, q] = np_minmax(aff[:, q], eps)
    for k in range(c):
      m = seed[i, :, :, k].reshape(hw)
      fg, bg = np.zeros(hw), np.zeros(hw)
      for q in range(hw):
        if m[q] >= fg_th:
          fg += aff[:, q]
        if m[q] <= bg_th:
          bg += aff[:, q]
      fg, bg = np_minmax(fg, eps), np_minmax(bg, eps)
      out[i, :, :, k] = np_minmax(np.maximum(fg - bg, 0), eps).reshape(h, w)
  return out


def np_pamr(image, seed, iterations, dilations):
  b, hh, ww, _ = image.shape
  image = image.astype(np.float64)
  offs = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]

  def at(y, x):
    return min(max(y, 0), hh - 1), min(max(x, 0), ww - 1)

  nbrs = {}  # (i, y, x) -> list of (weight, ny, nx)
  for i in range(b):
    for y in range(hh):
      for x in range(ww):
        all9 = [image[i][at(y + dy * d, x + dx * d)] for d in dilations
                for dy, dx in offs]
        std = np.std(np.array(all9), axis=0, ddof=1)
        pos, logit = [], []
        for d in dilations:
          for dy, dx in offs:
            if dy == 0 and dx == 0:
              continue
            ny, nx = at(y + dy * d, x + dx * d)
            k = -np.abs(image[i, y, x] - image[i, ny, nx]) / (1e-8 + 0.1 * std)
            pos.append((ny, nx))
            logit.append(k.mean())
        e = np.exp(np.array(logit) - max(logit))
        nbrs[i, y, x] = list(zip(e / e.sum(), pos))
  m = seed.astype(np.float64)
  for _ in range(iterations):
    new = np.zeros_like(m)
    for (i, y, x), lst in nbrs.items():
      for wgt, (ny, nx) in lst:
        new[i, y, x] += wgt * m[i, ny, nx]
    m = new
  return m


def np_hard_labels(seed, certain, uncertain, valid=None):
  b, hh, ww, _ = seed.shape
  out = np.zeros((b, hh, ww), np.int64)
  for i in range(b):
    for y in range(hh):
      for x in range(ww):
        v = seed[i, y, x]
        if valid is not None and not valid[i, y, x]:
          out[i, y, x] = 255
        elif v.max() >= certain:
          out[i, y, x] = int(np.argmax(v)) + 1
        elif v.max() <= uncertain:
          out[i, y, x] = 0
        else:
          out[i, y, x] = 255
  return out


def _labels(rng, b, c):
  labels = (rng.random((b, c)) < 0.5).astype(np.float32)
  labels[:, 0] = 1.0  # At least one present class per image.
  return labels


# --- seeds --------------------------------------------------------------------


@pytest.mark.parametrize('size', [(9, 7), (3, 2), (6, 5)])
def test_resize_matches_torch_bilinear(size):
  x = np.random.default_rng(0).normal(size=(2, 6, 5, 3)).astype(np.float32)
  got = jax.jit(method.resize, static_argnums=1)(x, size)
  assert got.shape == (2,) + size + (3,)
  np.testing.assert_allclose(got, np_resize(x, size), rtol=RTOL, atol=ATOL)


def test_cam_seed_matches_numpy_and_normalises():
  rng = np.random.default_rng(1)
  cam = rng.normal(size=(3, 5, 6, 4)).astype(np.float32)
  labels = _labels(rng, 3, 4)
  labels[1, 2] = 0.0
  got = np.asarray(jax.jit(method.cam_seed)(cam, labels))
  np.testing.assert_allclose(got, np_cam_seed(cam, labels), rtol=RTOL,
                             atol=ATOL)
  peak = got.max(axis=(1, 2))
  np.testing.assert_allclose(peak[labels > 0.5], 1.0, atol=1e-4)
  assert np.all(got[np.broadcast_to(labels[:, None, None] == 0, got.shape)]
                == 0)
  assert got.min() >= 0.0


def test_seg_seed_matches_numpy():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(2, 4, 5, 4)).astype(np.float32) * 3
  labels = np.array([[1, 0, 1], [0, 1, 0]], np.float32)
  got = jax.jit(method.seg_seed)(logits, labels)
  want = np.zeros((2, 4, 5, 3))
  for i in range(2):
    for y in range(4):
      for x in range(5):
        e = np.exp(logits[i, y, x].astype(np.float64))
        p = e / e.sum()
        for k in range(3):
          want[i, y, x, k] = p[k + 1] * labels[i, k]
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_select_seed_switches_at_step():
  rng = np.random.default_rng(3)
  cam = rng.random((2, 4, 4, 3)).astype(np.float32)
  seg = rng.random((2, 4, 4, 3)).astype(np.float32)
  fn = jax.jit(functools.partial(method.select_seed, cam_only_steps=10,
                                 seed_mix=0.25))
  for step in (0, 9):
    np.testing.assert_array_equal(fn(jnp.int32(step), cam, seg), cam)
  for step in (10, 11, 1000):
    np.testing.assert_allclose(fn(jnp.int32(step), cam, seg),
                               0.75 * seg + 0.25 * cam, rtol=RTOL, atol=ATOL)
  no_mix = method.select_seed(jnp.int32(10), cam, seg, 10, 0.0)
  np.testing.assert_allclose(no_mix, seg, rtol=RTOL, atol=ATOL)


# --- refinement ---------------------------------------------------------------


def _scg_inputs():
  rng = np.random.default_rng(4)
  b, h, w, c = 2, 5, 4, 4
  f1 = np.abs(rng.normal(size=(b, h, w, 6))).astype(np.float32)
  f2 = rng.normal(size=(b, h, w, 3)).astype(np.float32)
  f2[:, :2] += 1.5  # Some structure: the top rows correlate.
  seed = rng.random((b, h, w, c)).astype(np.float32)
  seed[0, ..., 1] = 0.0  # Absent class.
  seed[1, ..., 2] *= 0.2  # Present but no pixel reaches fg_th.
  seed[1, ..., 3] = 0.0
  return [f1, f2], seed


@pytest.mark.parametrize('kwargs', [
    {},
    dict(iteration=2),
    dict(first_th=0.3, second_th=0.5, fg_th=0.5, bg_th=0.2, iteration=1,
         second_weight=2.0),
])
def test_scg_matches_numpy(kwargs):
  feats, seed = _scg_inputs()
  got = np.asarray(jax.jit(functools.partial(method.scg, **kwargs))(feats,
                                                                   seed))
  want = np_scg(feats, seed, **kwargs)
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-4)
  assert np.all(got[0, ..., 1] == 0) and np.all(got[1, ..., 3] == 0)
  assert np.all(got[1, ..., 2] == 0)  # Empty fg set -> zeros, not NaN.
  np.testing.assert_allclose(got[0, ..., 0].max(), 1.0, atol=1e-4)


def test_scg_recovers_feature_region():
  # Two regions with orthogonal features; seed confident on part of region A.
  h, w = 4, 6
  feat = np.zeros((1, h, w, 2), np.float32)
  feat[0, :, :3, 0] = 1.0
  feat[0, :, 3:, 1] = 1.0
  seed = np.zeros((1, h, w, 1), np.float32)
  seed[0, :2, :2, 0] = 0.9
  got = np.asarray(jax.jit(method.scg)([feat], seed))[0, ..., 0]
  assert got[:, :3].min() > 0.9  # the whole region A (the authors' normalisation: not all 1)
  np.testing.assert_allclose(got[:2, :2], 1.0, rtol=1e-5)
  np.testing.assert_allclose(got[:, 3:], 0.0, atol=1e-6)


def test_scg_degenerate_inputs_are_finite():
  fn = jax.jit(method.scg)
  const = [jnp.ones((2, 3, 3, 4)), jnp.zeros((2, 3, 3, 2))]
  zero_seed = jnp.zeros((2, 3, 3, 2))
  out = fn(const, zero_seed)
  assert np.all(np.isfinite(out)) and np.all(np.asarray(out) == 0)
  seed = jnp.full((2, 3, 3, 2), 0.2).at[:, 0, 0, 0].set(1.0)
  out = fn(const, seed)
  assert out.shape == (2, 3, 3, 2) and np.all(np.isfinite(out))
  # Single array features are a one-level list.
  np.testing.assert_array_equal(method.scg(const[0], seed),
                                method.scg([const[0]], seed))


def test_pamr_matches_numpy():
  rng = np.random.default_rng(5)
  image = rng.normal(size=(1, 8, 8, 3)).astype(np.float32)
  image[0, :, 4:] += 3.0  # An edge for the affinities to respect.
  seed = rng.random((1, 8, 8, 2)).astype(np.float32)
  fn = jax.jit(functools.partial(method.pamr, iterations=3, dilations=(1, 2)))
  got = fn(image, seed)
  want = np_pamr(image, seed, iterations=3, dilations=(1, 2))
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
  # Affinities sum to 1, so a seed summing to 1 over classes keeps doing so.
  prob = seed / seed.sum(-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(fn(image, prob)).sum(-1), 1.0,
                             atol=1e-5)


@pytest.mark.slow
def test_refine_seed_dispatch():
  feats, seed = _scg_inputs()
  out = method.refine_seed('none', seed)
  np.testing.assert_array_equal(out, seed)
  out = method.refine_seed('scg', seed, features=feats,
                           scg_kwargs=dict(fg_th=0.4, levels=(3, 4)))
  np.testing.assert_allclose(out, method.scg(feats, seed, fg_th=0.4))
  image = np.random.default_rng(6).random(seed.shape[:3] + (3,))
  out = method.refine_seed('pamr', seed, image=image,
                           pamr_kwargs=dict(iterations=2, dilations=(1,)))
  np.testing.assert_allclose(
      out, method.pamr(image, seed, iterations=2, dilations=(1,)))
  with pytest.raises(ValueError, match="'crf'.*'scg'.*'pamr'.*'none'"):
    method.refine_seed('crf', seed)
  with pytest.raises(ValueError, match='features'):
    method.refine_seed('scg', seed)


# --- certainty ----------------------------------------------------------------


def test_hard_labels_matches_numpy_with_band_and_valid():
  rng = np.random.default_rng(7)
  seed = rng.random((2, 6, 5, 3)).astype(np.float32) ** 2
  valid = rng.random((2, 6, 5)) > 0.2
  fn = jax.jit(method.hard_labels)
  got = np.asarray(fn(seed, 0.55, 0.10))
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, np_hard_labels(seed, 0.55, 0.10))
  best = seed.max(-1)
  band = (best > 0.10) & (best < 0.55)
  assert band.any() and np.all(got[band] == 255)
  assert np.all(got[best <= 0.10] == 0)
  got = np.asarray(fn(seed, 0.55, 0.10, valid))
  np.testing.assert_array_equal(got, np_hard_labels(seed, 0.55, 0.10, valid))
  assert np.all(got[~valid] == 255)
  # Thresholds are inclusive.
  edge = np.array([0.55, 0.10, 0.3], np.float32).reshape(1, 1, 3, 1)
  np.testing.assert_array_equal(method.hard_labels(edge, 0.55, 0.10),
                                [[[1, 0, 255]]])


def test_argmax_labels_matches_numpy():
  rng = np.random.default_rng(8)
  seed = rng.random((2, 4, 5, 3)).astype(np.float32) * 0.8
  valid = rng.random((2, 4, 5)) > 0.3
  got = np.asarray(jax.jit(method.argmax_labels)(seed, valid))
  want = np.zeros((2, 4, 5), np.int64)
  for i in range(2):
    for y in range(4):
      for x in range(5):
        s = seed[i, y, x]
        scores = [1.0 - s.max()] + list(s)
        want[i, y, x] = int(np.argmax(scores)) if valid[i, y, x] else 255
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, want)
  assert set(np.unique(want)) >= {0, 255} and want.max() == 255


# --- mixing -------------------------------------------------------------------


def _np_mixed_labels(hard, labels, hard_mix, chosen, min_area):
  b, hh, ww = hard.shape
  thresh = min_area * hh * ww
  out = np.zeros(labels.shape, np.float32)
  for i in range(b):
    for k in range(labels.shape[1]):
      area_mix = np.sum(hard_mix[i] == k + 1)
      lost = np.sum((hard[i] == k + 1) & (hard_mix[i] != k + 1))
      keep = labels[i, k] > 0.5 and not (lost > 0 and area_mix < thresh)
      gain = chosen[i, k] and area_mix >= thresh
      out[i, k] = float(keep or gain)
  return out


def _mix_inputs(seed):
  rng = np.random.default_rng(seed)
  b, hh, ww, c = 4, 8, 8, 3
  images = rng.normal(size=(b, hh, ww, 3)).astype(np.float32)
  labels = _labels(rng, b, c)
  hard = np.zeros((b, hh, ww), np.int32)
  for i in range(b):
    cls = np.flatnonzero(labels[i])
    hard[i] = rng.choice(np.concatenate([[0, 255], cls + 1]), size=(hh, ww))
  return images, hard, labels


def test_mix_batch_full_paste_matches_numpy():
  images, hard, labels = _mix_inputs(9)
  b = images.shape[0]
  fn = jax.jit(functools.partial(method.mix_batch, class_prob=1.0,
                                 min_area=0.2))
  for key in range(3):
    out = fn(jax.random.PRNGKey(key), images, hard, labels)
    mixed, mixed_hard, mixed_labels, mask = map(np.asarray, out)
    # With class_prob=1 every present class of j is pasted: find j per i.
    perm = []
    for i in range(b):
      cands = [j for j in range(b)
               if np.array_equal(mask[i] > 0, (hard[j] >= 1) & (hard[j] < 255))]
      assert cands, 'mask is not the foreground of any image'
      perm.append(cands[0])
    assert sorted(perm) == list(range(b))
    m = mask > 0
    for i, j in enumerate(perm):
      np.testing.assert_array_equal(mixed[i][m[i]], images[j][m[i]])
      np.testing.assert_array_equal(mixed[i][~m[i]], images[i][~m[i]])
      np.testing.assert_array_equal(
          mixed_hard[i], np.where(m[i], hard[j], hard[i]))
    has_pixels = np.array([[np.any(hard[j] == k + 1) for k in range(3)]
                           for j in range(b)])
    chosen = (labels > 0.5)[perm] & has_pixels[perm]
    np.testing.assert_array_equal(
        mixed_labels,
        _np_mixed_labels(hard, labels, mixed_hard, chosen, min_area=0.2))
    assert set(np.unique(mask)) <= {0.0, 1.0}


def test_mix_batch_random_subset_properties():
  images, hard, labels = _mix_inputs(10)
  fn = jax.jit(method.mix_batch)
  fg = (hard >= 1) & (hard < 255)
  proper_subset = False
  for key in range(6):
    mixed, mixed_hard, _, mask = map(
        np.asarray, fn(jax.random.PRNGKey(key), images, hard, labels))
    m = mask > 0
    for i in range(len(images)):
      assert m[i].any()  # Every image has pixels of a present class.
      js = [j for j in range(len(images)) if np.all(fg[j][m[i]])
            and np.array_equal(mixed[i][m[i]], images[j][m[i]])]
      assert js
      j = js[0]
      # M is a union of whole classes of j.
      for k in np.unique(hard[j][m[i]]):
        assert np.all(m[i][hard[j] == k])
      np.testing.assert_array_equal(mixed_hard[i][~m[i]], hard[i][~m[i]])
      proper_subset |= m[i].sum() < fg[j].sum()
  assert proper_subset  # class_prob=0.5 does leave classes out.


def test_mix_batch_drops_covered_class():
  hh = ww = 8
  images = np.stack([np.zeros((hh, ww, 3)), np.ones((hh, ww, 3))])
  images = images.astype(np.float32)
  hard = np.zeros((2, hh, ww), np.int32)
  hard[0, 2:4, 2:4] = 1      # Class 0 of image 0 (4 px) ...
  hard[0, 7, 7] = 4          # Class 3 (1 px, below min_area), untouched.
  hard[1, 1:5, 1:5] = 2      # ... fully covered by class 1 of image 1.
  hard[1, 6, 0] = 3          # Class 2 of image 1: pasted, but 1 px only.
  labels = np.array([[1, 0, 0, 1, 1], [0, 1, 1, 0, 0]], np.float32)
  # Class 4 of image 0 has no certain pixel: it keeps its label.
  fn = jax.jit(functools.partial(method.mix_batch, class_prob=1.0,
                                 min_area=3 / 64))
  for key in range(50):
    out = fn(jax.random.PRNGKey(key), images, hard, labels)
    if np.asarray(out[1])[0, 2, 2] == 2:  # Image 0 received image 1.
      break
  else:
    pytest.fail('no permutation swapped the pair')
  mixed, mixed_hard, mixed_labels, mask = map(np.asarray, out)
  np.testing.assert_array_equal(mixed_labels[0], [0, 1, 0, 1, 1])
  np.testing.assert_array_equal(mixed_labels[1], [1, 1, 1, 0, 0])
  assert mixed_hard[0, 6, 0] == 3 and mask[0].sum() == 17
  np.testing.assert_array_equal(mixed[0], mask[0][..., None] * np.ones(3))


def test_mix_batch_none_and_unknown_kind():
  images, hard, labels = _mix_inputs(11)
  key = jax.random.PRNGKey(0)
  out = method.mix_batch(key, images, hard, labels, kind='none')
  np.testing.assert_array_equal(out[0], images)
  np.testing.assert_array_equal(out[1], hard)
  np.testing.assert_array_equal(out[2], labels)
  assert out[3].shape == hard.shape and not np.any(out[3])
  with pytest.raises(ValueError, match='cutmix'):
    method.mix_batch(key, images, hard, labels, kind='cutmix')


def np_edge_strength(probs, d=1):
  """max over channels and in-image pixels d away along each axis of |p(x) - p(n)|, one pixel at
  a time."""
  b, hh, ww, _ = probs.shape
  out = np.zeros((b, hh, ww), probs.dtype)
  for i in range(b):
    for y in range(hh):
      for x in range(ww):
        for dy, dx in ((-d, 0), (d, 0), (0, -d), (0, d)):
          ny, nx = y + dy, x + dx
          if 0 <= ny < hh and 0 <= nx < ww:
            diff = np.max(np.abs(probs[i, y, x] - probs[i, ny, nx]))
            out[i, y, x] = max(out[i, y, x], diff)
  return out


def np_paste_band(mask, edge, r):
  """Pixels whose clipped (2r+1)^2 window holds M and non-M pixels and an edge pixel."""
  b, hh, ww = mask.shape
  out = np.zeros((b, hh, ww), bool)
  for i in range(b):
    for y in range(hh):
      for x in range(ww):
        win = (slice(max(y - r, 0), y + r + 1), slice(max(x - r, 0), x + r + 1))
        m = mask[i][win]
        out[i, y, x] = m.any() and not m.all() and edge[i][win].any()
  return out


def _np_seed_probs(seed):
  return np.concatenate([1.0 - seed.max(-1, keepdims=True), seed], -1)


def _np_other_side_distance(m):
  """Per pixel: Chebyshev distance to the nearest pixel on the other side of M (inf if none)."""
  hh, ww = m.shape
  out = np.full((hh, ww), np.inf)
  ys, xs = np.mgrid[:hh, :ww]
  for y in range(hh):
    for x in range(ww):
      other = m != m[y, x]
      if other.any():
        out[y, x] = np.max([np.abs(ys - y), np.abs(xs - x)], axis=0)[other].min()
  return out


def _epm_inputs(seed):
  """A blocky soft seed (flat 3 x 3 blocks: edges on block borders only) and its argmax map."""
  rng = np.random.default_rng(seed)
  b, hh, ww, c = 4, 12, 12, 3
  images = rng.normal(size=(b, hh, ww, 3)).astype(np.float32)
  labels = _labels(rng, b, c)
  blocks = np.kron(rng.random((b, hh // 3, ww // 3, c)), np.ones((1, 3, 3, 1)))
  soft = np.clip(blocks + 0.03 * rng.normal(size=blocks.shape), 0.0, 1.0)
  soft = (soft * labels[:, None, None, :]).astype(np.float32)
  valid = np.ones((b, hh, ww), bool)
  valid[:, -1, -2:] = False  # Crop padding.
  hard = np.asarray(method.argmax_labels(soft, valid))
  return images, hard, labels, soft


def test_edge_strength_and_paste_band_match_numpy():
  rng = np.random.default_rng(13)
  probs = rng.random((2, 7, 9, 4)).astype(np.float32)
  probs[0, :, :4] = 0.5  # A flat region: no edges inside it.
  for d in (1, 2, 3):
    np.testing.assert_array_equal(
        np.asarray(jax.jit(mix_lib.edge_strength, static_argnums=1)(probs, d)),
        np_edge_strength(probs, d))
  mask = (rng.random((2, 7, 9)) < 0.4).astype(np.float32)
  mask[1] = 0.0
  mask[1, 2:5, 3:7] = 1.0  # One rectangle: the band is a ring around its border.
  edge = np_edge_strength(probs) >= 0.6
  assert 0 < edge.mean() < 1
  for r in (0, 1, 2, 3):
    got = jax.jit(functools.partial(mix_lib.paste_band, edge_threshold=0.6, edge_band=r))(
        mask, probs)
    np.testing.assert_array_equal(np.asarray(got), np_paste_band(mask > 0, edge, r))
  band = np.asarray(mix_lib.paste_band(mask, probs, edge_threshold=0.0, edge_band=1))
  ring = np.zeros((7, 9), bool)
  ring[1:6, 2:8] = True
  ring[3, 4:6] = False  # Rectangle pixels with no outside pixel within distance 1.
  np.testing.assert_array_equal(band[1], ring)  # Threshold 0: every pixel is an edge pixel.


@pytest.mark.parametrize('band', [1, 2])
def test_edgepredictmix_full_paste_matches_numpy(band):
  images, hard, labels, soft = _epm_inputs(14)
  b = images.shape[0]
  kw = dict(class_prob=1.0, min_area=0.05)
  epm = jax.jit(functools.partial(method.mix_batch, kind='edgepredictmix', edge_threshold=0.3,
                                  edge_band=band, **kw))
  epm0 = jax.jit(functools.partial(method.mix_batch, kind='edgepredictmix', edge_band=0, **kw))
  cm = jax.jit(functools.partial(method.mix_batch, kind='classmix', **kw))
  probs = _np_seed_probs(soft)
  edge = np_edge_strength(probs) >= 0.3
  assert 0.1 < edge.mean() < 0.9
  fg = (hard >= 1) & (hard < 255)
  banded = 0
  for key in range(3):
    k = jax.random.PRNGKey(key)
    cm_out = [np.asarray(x) for x in cm(k, images, hard, labels)]
    # edge_band=0: exactly ClassMix.
    for got, want in zip(epm0(k, images, hard, labels, seed=soft), cm_out):
      np.testing.assert_array_equal(np.asarray(got), want)
    mixed, mixed_hard, mixed_labels, mask = map(
        np.asarray, epm(k, images, hard, labels, seed=soft))
    # Same images, mask and labels as ClassMix: the band never removes a label.
    np.testing.assert_array_equal(mixed, cm_out[0])
    np.testing.assert_array_equal(mixed_labels, cm_out[2])
    np.testing.assert_array_equal(mask, cm_out[3])
    m = mask > 0
    perm = [next(j for j in range(b) if np.array_equal(m[i], fg[j])) for i in range(b)]
    assert sorted(perm) == list(range(b))
    want_band = np_paste_band(m, edge[perm], band)
    unbanded = np.stack([np.where(m[i], hard[j], hard[i]) for i, j in enumerate(perm)])
    np.testing.assert_array_equal(mixed_hard, np.where(want_band, 255, unbanded))
    has_pixels = np.array([[np.any(hard[j] == c + 1) for c in range(3)] for j in range(b)])
    chosen = (labels > 0.5)[perm] & has_pixels[perm]
    np.testing.assert_array_equal(
        mixed_labels, _np_mixed_labels(hard, labels, unbanded, chosen, min_area=0.05))
    banded += np.sum(want_band & (unbanded != 255))
    assert not np.all(want_band[m.any((1, 2))])  # The band is not the whole image.
  assert banded > 0


def test_edgepredictmix_band_properties():
  images, hard, labels, soft = _epm_inputs(15)
  band = 2
  epm = jax.jit(functools.partial(method.mix_batch, kind='edgepredictmix', edge_band=band))
  cm = jax.jit(functools.partial(method.mix_batch, kind='classmix'))
  ignored = 0
  for key in range(4):
    k = jax.random.PRNGKey(key)
    _, cm_hard, cm_labels, cm_mask = map(np.asarray, cm(k, images, hard, labels))
    _, mixed_hard, mixed_labels, mask = map(
        np.asarray, epm(k, images, hard, labels, seed=soft))
    np.testing.assert_array_equal(mask, cm_mask)
    np.testing.assert_array_equal(mixed_labels, cm_labels)  # Labels ignore the band.
    changed = mixed_hard != cm_hard
    assert np.all(mixed_hard[changed] == 255)  # The band only ignores pixels.
    for i in range(len(images)):
      dist = _np_other_side_distance(mask[i] > 0)
      assert np.all(dist[changed[i]] <= band)  # ... and only near the paste boundary.
    ignored += changed.sum()
  assert ignored > 0


def test_edgepredictmix_needs_seed():
  images, hard, labels, soft = _epm_inputs(16)
  key = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match='seed'):
    method.mix_batch(key, images, hard, labels, kind='edgepredictmix')
  with pytest.raises(ValueError, match='seed shape'):
    method.mix_batch(key, images, hard, labels, kind='edgepredictmix', seed=soft[..., :2])
  with pytest.raises(ValueError, match='edge_band'):
    method.mix_batch(key, images, hard, labels, kind='edgepredictmix', seed=soft, edge_band=-1)


# --- losses -------------------------------------------------------------------


def test_multilabel_soft_margin_matches_numpy():
  rng = np.random.default_rng(12)
  logits = (rng.normal(size=(4, 5)) * 4).astype(np.float32)
  logits[0, :2] = [120.0, -120.0]  # Stable at extreme logits.
  labels = _labels(rng, 4, 5)
  total = 0.0
  for i in range(4):
    for k in range(5):
      x, y = float(logits[i, k]), float(labels[i, k])
      softplus_neg = max(-x, 0) + math.log1p(math.exp(-abs(x)))  # -log sig(x)
      total += y * softplus_neg + (1 - y) * (softplus_neg + x)
  got = jax.jit(method.multilabel_soft_margin)(logits, labels)
  np.testing.assert_allclose(got, total / 20, rtol=RTOL, atol=ATOL)


def test_seg_cross_entropy_matches_numpy_and_ignores():
  rng = np.random.default_rng(13)
  logits = rng.normal(size=(2, 4, 5, 4)).astype(np.float32) * 2
  hard = rng.integers(0, 4, size=(2, 4, 5)).astype(np.int32)
  hard[rng.random(hard.shape) < 0.3] = 255
  total, count = 0.0, 0
  for i in range(2):
    for y in range(4):
      for x in range(5):
        if hard[i, y, x] == 255:
          continue
        z = logits[i, y, x].astype(np.float64)
        total += np.log(np.exp(z).sum()) - z[hard[i, y, x]]
        count += 1
  fn = jax.jit(method.seg_cross_entropy)
  np.testing.assert_allclose(fn(logits, hard), total / count, rtol=RTOL,
                             atol=ATOL)
  all_ignored = np.full_like(hard, 255)
  assert float(fn(logits, all_ignored)) == 0.0
  grad = jax.grad(method.seg_cross_entropy)(jnp.asarray(logits), all_ignored)
  assert np.all(np.isfinite(grad)) and not np.any(grad)
  grad = jax.grad(method.seg_cross_entropy)(jnp.asarray(logits), hard)
  assert np.all(np.isfinite(grad)) and np.any(grad)
  assert not np.any(np.asarray(grad)[hard == 255])


@pytest.mark.parametrize('kind', ['l1', 'mse'])
def test_cam_loss_matches_numpy(kind):
  rng = np.random.default_rng(14)
  cam = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
  probs = rng.random((2, 8, 8, 3)).astype(np.float32)
  labels = np.array([[1, 0, 1], [0, 1, 0]], np.float32)
  pred = np_cam_seed(cam, labels)
  target = np_resize(probs, (4, 4))
  total, count = 0.0, 0
  for i in range(2):
    for k in range(3):
      if labels[i, k] < 0.5:
        continue
      for y in range(4):
        for x in range(4):
          d = pred[i, y, x, k] - target[i, y, x, k]
          total += abs(d) if kind == 'l1' else d * d
          count += 1
  fn = jax.jit(functools.partial(method.cam_loss, kind=kind))
  np.testing.assert_allclose(fn(cam, probs, labels), total / count,
                             rtol=RTOL, atol=ATOL)
  # The target is under stop-gradient; the CAM gets a gradient.
  g_cam, g_probs = jax.grad(fn, argnums=(0, 1))(cam, probs, labels)
  assert not np.any(g_probs) and np.any(g_cam)
  assert float(fn(cam, probs, np.zeros_like(labels))) == 0.0


def test_cam_loss_unknown_kind():
  with pytest.raises(ValueError, match='huber'):
    method.cam_loss(jnp.zeros((1, 2, 2, 1)), jnp.zeros((1, 2, 2, 1)),
                    jnp.ones((1, 1)), kind='huber')
