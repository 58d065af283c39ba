"""The random walk against IRN's propagate_to_edge re-derived here in numpy (float64), the
sparse walk against the dense one, and sem_seg_labels against make_sem_seg_labels in numpy.

The reference builds IRN's graph literally: the boundary map padded with 1 (left, right and
bottom by the radius), PathIndex's flat source / destination / path indices on the padded map,
affinities 1 - max on the path, a dense matrix with both orientations and a unit diagonal
(duplicates summed, as torch's sparse-to-dense does), the padded vertices cropped away, a^beta
column-normalised, squared exp_times times, applied to seed * (1 - edge). The pair layout
(search directions and paths) is checked on its own in test_affinity.py.
"""

import numpy as np
import pytest

from recurseed_jax.method import affinity
from recurseed_jax.method import random_walk


def _irn_propagate(seed, edge, radius=5, beta=10.0, exp_times=8):
  """IRN's propagate_to_edge for one map: seed [h, w, C], edge [h, w] -> [h, w, C]."""
  h, w, c = seed.shape
  hp, wp = h + radius, w + 2 * radius
  padded = np.pad(edge.astype(np.float64), ((0, radius), (radius, radius)), constant_values=1.0)
  rf = radius - 1
  hc, wc = hp - rf, wp - 2 * rf
  full = np.arange(hp * wp).reshape(hp, wp)
  src = full[:hc, rf:rf + wc].ravel()
  dense = np.zeros((hp * wp, hp * wp))
  for _, path in affinity.search_paths(radius):
    idx = np.stack([full[y:y + hc, rf + x:rf + x + wc].ravel() for y, x in path])
    aff = 1.0 - padded.ravel()[idx].max(axis=0)
    np.add.at(dense, (src, idx[0]), aff)
    np.add.at(dense, (idx[0], src), aff)
  dense[np.arange(hp * wp), np.arange(hp * wp)] += 1.0
  dense = dense.reshape(hp, wp, hp, wp)[:-radius, radius:-radius, :-radius, radius:-radius]
  trans = dense.reshape(h * w, h * w) ** beta
  trans /= trans.sum(axis=0, keepdims=True)
  for _ in range(exp_times):
    trans = trans @ trans
  x = (seed * (1.0 - edge)[..., None]).reshape(h * w, c)
  return (x.T @ trans).T.reshape(h, w, c)


def _scene(batch, size, channels, seed):
  """Seeds with blobs, a boundary map with a wall across, noise on both."""
  rng = np.random.RandomState(seed)
  h, w = size
  yy, xx = np.mgrid[:h, :w]
  s = np.stack([np.exp(-((yy - rng.uniform(0, h)) ** 2 + (xx - rng.uniform(0, w)) ** 2) / 8.0)
                for _ in range(batch * channels)], axis=-1).reshape(h, w, batch, channels)
  s = (s.transpose(2, 0, 1, 3) + 0.05 * rng.rand(batch, h, w, channels)).astype(np.float32)
  e = 0.2 * rng.rand(batch, h, w) ** 2
  e[:, :, w // 2] = 0.9  # a wall the walk should barely cross
  return s, e.astype(np.float32)


def _assert_close(got, ref, rel=1e-4, name=''):
  scale = float(np.abs(ref).max())
  np.testing.assert_allclose(got, ref, rtol=0, atol=rel * scale, err_msg=name)


SIZES = [(11, 14), (3, 7), (6, 2), (1, 1)]  # non-square; h < radius; w < radius; one pixel


@pytest.mark.parametrize('size', [  # the largest map only in the full suite
    pytest.param(s, marks=pytest.mark.slow) if s == SIZES[0] else s for s in SIZES],
    ids=[f'{h}x{w}' for h, w in SIZES])
def test_propagate_matches_irn_and_the_dense_walk(size):
  seed, edge = _scene(2, size, 3, seed=sum(size))
  got = np.asarray(random_walk.propagate(seed, edge))
  dense = np.asarray(random_walk.propagate_dense(seed, edge)) if size[1] > 2 else None
  for b in range(2):
    ref = _irn_propagate(seed[b], edge[b])
    _assert_close(got[b], ref, name=f'sparse vs IRN, map {b}')
    if dense is not None:  # (its compile dominates; the tiniest maps check the sparse walk)
      _assert_close(dense[b], ref, name=f'dense vs IRN, map {b}')
      _assert_close(got[b], dense[b], name=f'sparse vs dense, map {b}')
    if size[0] * size[1] > 1:  # the walk moved mass: a no-op would fail above
      assert np.abs(ref - seed[b] * (1 - edge[b])[..., None]).max() > 0.05 * np.abs(ref).max()


def test_other_beta_exp_times_radius():
  seed, edge = _scene(1, (9, 12), 2, seed=5)
  kwargs = dict(beta=4.0, exp_times=3, radius=3)
  got = np.asarray(random_walk.propagate(seed, edge, **kwargs))[0]
  _assert_close(got, _irn_propagate(seed[0], edge[0], **kwargs))
  _assert_close(np.asarray(random_walk.propagate_dense(seed, edge, **kwargs))[0],
                _irn_propagate(seed[0], edge[0], **kwargs))


def test_the_wall_holds():
  """A full-height boundary of probability 1 splits the graph: nothing crosses it."""
  seed, edge = _scene(1, (8, 13), 1, seed=6)
  seed[..., 6:, :] = 0.0  # mass on the left only
  edge[:, :, 6] = 1.0
  got = np.asarray(random_walk.propagate(seed, edge))
  assert got[0, :, :6].max() > 0.01 and got[0, :, 6:].max() == 0.0


def test_padded_maps_give_the_unpadded_walk():
  """valid_hw drops the padding from the graph: the valid region walks as if alone."""
  seed, edge = _scene(2, (12, 16), 2, seed=7)
  valid_hw = np.array([[9, 11], [12, 16]])
  garbage = seed.copy()
  garbage[0, 9:], garbage[0, :, 11:] = 5.0, 5.0  # the padding may hold anything
  got = np.asarray(random_walk.propagate(garbage, edge, valid_hw=valid_hw))
  alone = np.asarray(random_walk.propagate(seed[:1, :9, :11], edge[:1, :9, :11]))[0]
  _assert_close(got[0, :9, :11], alone, rel=1e-6, name='valid region')
  assert np.all(got[0, 9:] == 0) and np.all(got[0, :, 11:] == 0)
  _assert_close(got[1], _irn_propagate(seed[1], edge[1]))


def _bilinear_x4(x):
  """[h, w, K] -> [4h, 4w, K]: half-pixel centres, source clamped at the borders (torch's)."""
  def axis(n):
    src = np.clip((np.arange(4 * n) + 0.5) / 4 - 0.5, 0, None)
    lo = np.minimum(np.floor(src).astype(int), n - 1)
    hi = np.minimum(lo + 1, n - 1)
    return lo, hi, src - lo
  (r0, r1, fr), (c0, c1, fc) = axis(x.shape[0]), axis(x.shape[1])
  rows = x[r0] * (1 - fr)[:, None, None] + x[r1] * fr[:, None, None]
  return rows[:, c0] * (1 - fc)[None, :, None] + rows[:, c1] * fc[None, :, None]


def _irn_labels(rw, classes, size, bg=0.25):
  up = _bilinear_x4(rw.astype(np.float64))[:size[0], :size[1]]
  up = up / up.max()
  scores = np.concatenate([np.full(up.shape[:2] + (1,), bg), up], axis=-1)
  return np.concatenate([[0], np.asarray(classes) + 1])[np.argmax(scores, axis=-1)]


def test_sem_seg_labels_match_make_sem_seg_labels():
  rng = np.random.RandomState(8)
  sizes = [(37, 50), (29, 44)]  # 37 = 4 * 10 - 3: a partial last cell
  bucket = (40, 52)
  cells = (bucket[0] // 4, bucket[1] // 4)
  rw = rng.rand(2, *cells, 3).astype(np.float32) ** 3
  classes = np.array([[4, 0, 17], [9, 2, -1]])  # image 2 keeps two classes
  rw[1, ..., 2] = 50.0  # an unused channel must not count
  rw[1, 8:], rw[1, :, 11:] = 50.0, 50.0  # nor cells past the valid ones
  got = np.asarray(random_walk.sem_seg_labels(rw, classes, bucket, valid_hw=np.array(sizes)))
  for b, (h, w) in enumerate(sizes):
    k = (classes[b] >= 0).sum()
    ref = _irn_labels(rw[b, :(h - 1) // 4 + 1, :(w - 1) // 4 + 1, :k], classes[b, :k], (h, w))
    assert len(np.unique(ref)) == k + 1, 'every label should appear'
    np.testing.assert_array_equal(got[b, :h, :w], ref)
    assert np.all(got[b, h:] == 0) and np.all(got[b, :, w:] == 0)
  one = np.asarray(random_walk.sem_seg_labels(rw[:1, :10, :13], classes[:1], (37, 50)))
  np.testing.assert_array_equal(one[0], got[0, :37, :50])


def test_zero_scores_are_background_and_bad_input_is_named():
  labels = random_walk.sem_seg_labels(np.zeros((1, 3, 3, 1), np.float32), np.array([[5]]), (9, 9))
  assert np.all(np.asarray(labels) == 0)
  seed, edge = _scene(1, (5, 6), 2, seed=9)
  with pytest.raises(ValueError, match='edge must be'):
    random_walk.propagate(seed, edge[:, :4])
  with pytest.raises(ValueError, match='exp_times'):
    random_walk.propagate(seed, edge, exp_times=-1)
  with pytest.raises(ValueError, match='valid_hw'):
    random_walk.propagate(seed, edge, valid_hw=np.array([5, 6]))
  with pytest.raises(ValueError, match='image_size'):
    random_walk.sem_seg_labels(seed, np.array([[1, 2]]), (21, 24))
  with pytest.raises(ValueError, match='classes must be'):
    random_walk.sem_seg_labels(seed, np.array([1, 2]), (20, 24))
