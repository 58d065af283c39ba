"""IRN's pair layout, affinities, relation labels and loss against slow re-derivations here.

The references follow IRN's definitions (misc/indexing.py, voc12/dataloader.py,
step/train_irn.py) written out as plain loops or flat-index gathers.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recurseed_jax.method import affinity


def _slow_paths(radius):
  """IRN's search directions and paths, from their definitions (floating-point geometry)."""
  dirs = [(dy, dx) for dy in range(radius) for dx in range(-radius + 1, radius)
          if (dy > 0 or dx > 0) and dy * dy + dx * dx < radius * radius]
  out = []
  for dy, dx in dirs:  # lexicographic: IRN's enumeration order
    norm = math.hypot(dy, dx)
    path = [(y, x) for y in range(min(0, dy), max(0, dy) + 1)
            for x in range(min(0, dx), max(0, dx) + 1) if abs(dy * x - dx * y) / norm < 1]
    path.sort(key=lambda c: (-abs(c[0]) - abs(c[1]), c[0], c[1]))
    out.append(((dy, dx), tuple(path)))
  out.sort(key=lambda item: len(item[1]))  # stable: grouped by length, enumeration order within
  return tuple(out)


@pytest.mark.parametrize('radius', [5, 10])
def test_search_paths_follow_irn_definitions(radius):
  paths = affinity.search_paths(radius)
  assert paths == _slow_paths(radius)
  assert len(paths) == {5: 34, 10: 152}[radius]  # IRN's PathIndex counts
  assert all(path[0] == d and path[-1] == (0, 0) for d, path in paths)
  np.testing.assert_array_equal(affinity.directions(radius), [d for d, _ in paths])


def test_a_few_paths_by_hand():
  paths = dict(affinity.search_paths(5))
  assert paths[(0, 3)] == ((0, 3), (0, 2), (0, 1), (0, 0))
  assert paths[(2, 0)] == ((2, 0), (1, 0), (0, 0))
  assert paths[(1, 1)] == ((1, 1), (0, 1), (1, 0), (0, 0))
  # (1, -3): squared distance (x + 3 y)^2 / 10 <= 0.9 to the line for all of the 2 x 4 box;
  # sorted by -|y| - |x|, ties in row-major order.
  assert paths[(1, -3)] == ((1, -3), (0, -3), (1, -2), (0, -2), (1, -1), (0, -1), (1, 0), (0, 0))


def _flat_pairs(size, radius):
  """IRN's PathIndex.get_path_indices: flat source indices and, per direction, path indices."""
  h, w = size
  rf = radius - 1
  hc, wc = h - rf, w - 2 * rf
  full = np.arange(h * w).reshape(h, w)
  src = full[:hc, rf:rf + wc].ravel()
  paths = [np.stack([full[y:y + hc, rf + x:rf + x + wc].ravel() for y, x in path])
           for _, path in _slow_paths(radius)]
  return src, paths, (hc, wc)


@pytest.mark.parametrize('size, radius', [((24, 30), 10), ((9, 13), 5), ((5, 9), 5)])
def test_edge_to_affinity_is_one_minus_max_on_the_path(size, radius):
  edge = np.random.RandomState(0).rand(2, *size).astype(np.float32)
  _, paths, (hc, wc) = _flat_pairs(size, radius)
  flat = edge.reshape(2, -1)
  ref = np.stack([1 - flat[:, p].max(axis=1) for p in paths], axis=-1).reshape(2, hc, wc, -1)
  np.testing.assert_array_equal(np.asarray(affinity.edge_to_affinity(edge, radius)), ref)


def _label_map(size, seed):
  rng = np.random.RandomState(seed)
  label = np.zeros(size, np.int32)
  label[2:9, 3:12] = 4
  label[5:, 10:] = 7
  label[rng.rand(*size) < 0.1] = 255
  label[rng.rand(*size) < 0.05] = 4
  return label


@pytest.mark.parametrize('radius', [5, 10])
def test_pair_labels_match_a_loop_over_pairs(radius):
  size = (20, 27)
  label = np.stack([_label_map(size, 1), _label_map(size, 2)])
  got = {k: np.asarray(v) for k, v in affinity.pair_labels(label, radius).items()}
  rf = radius - 1
  hc, wc = affinity.crop_size(size, radius)
  want = {k: np.zeros((2, hc, wc, len(affinity.search_paths(radius))), np.float32)
          for k in ('bg_pos', 'fg_pos', 'neg')}
  for b in range(2):
    for i in range(hc):
      for j in range(wc):
        a = label[b, i, rf + j]
        for d, ((dy, dx), _) in enumerate(affinity.search_paths(radius)):
          c = label[b, i + dy, rf + j + dx]
          if a == 255 or c == 255:
            continue
          key = 'neg' if a != c else 'bg_pos' if a == 0 else 'fg_pos'
          want[key][b, i, j, d] = 1
  for key in want:
    assert want[key].sum() > 0, key
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_affinity_loss_matches_a_loop_over_pairs():
  size, radius = (14, 20), 5
  rng = np.random.RandomState(3)
  label = np.stack([_label_map(size, 4), _label_map(size, 5)])
  aff = rng.uniform(0, 1, (2,) + affinity.crop_size(size, radius)
                    + (len(affinity.search_paths(radius)),)).astype(np.float32)
  labels = affinity.pair_labels(label, radius)
  got = affinity.affinity_loss(aff, labels)
  sums = {'bg_pos': [0.0, 0.0], 'fg_pos': [0.0, 0.0], 'neg': [0.0, 0.0]}
  masks = {k: np.asarray(v) for k, v in labels.items()}
  for index in np.ndindex(aff.shape):
    a = float(aff[index])
    for key in sums:
      if masks[key][index]:
        sums[key][0] += -math.log(1 + 1e-5 - a) if key == 'neg' else -math.log(a + 1e-5)
        sums[key][1] += 1
  mean = {k: s / (n + 1e-5) for k, (s, n) in sums.items()}
  pos = mean['bg_pos'] / 2 + mean['fg_pos'] / 2
  want = dict(mean, pos=pos, total=(pos + mean['neg']) / 2)
  for key, value in want.items():
    assert float(got[key]) == pytest.approx(value, rel=1e-5), key
  # Per-device parts, added, give the global batch's loss (not a mean of per-device losses).
  halves = [affinity.affinity_loss_parts(aff[b:b + 1], {k: v[b:b + 1] for k, v in labels.items()})
            for b in range(2)]
  summed = {k: (halves[0][k][0] + halves[1][k][0], halves[0][k][1] + halves[1][k][1])
            for k in halves[0]}
  merged = affinity.affinity_loss_from_parts(summed)
  assert float(merged['total']) == pytest.approx(want['total'], rel=1e-5)


def test_loss_trains_the_edges_and_survives_empty_sets():
  size, radius = (12, 16), 5
  label = np.zeros((1,) + size, np.int32)
  label[:, :, 8:] = 3  # background left, class 3 right: a boundary at column 8
  labels = affinity.pair_labels(label, radius)

  def loss(logits):
    return affinity.affinity_loss(affinity.edge_to_affinity(jax.nn.sigmoid(logits), radius),
                                  labels)['total']

  grad = np.asarray(jax.jit(jax.grad(loss))(jnp.zeros((1,) + size)))
  # Negatives push the boundary up where pairs cross it, positives push it down elsewhere.
  assert grad[0, 4, 7:9].max() < 0 < min(grad[0, 4, 4], grad[0, 4, 11])
  assert np.isfinite(grad).all()
  empty = {k: jnp.zeros_like(v) for k, v in labels.items()}
  out = affinity.affinity_loss(jnp.full(labels['neg'].shape, 0.5), empty)
  assert float(out['total']) == 0.0


def test_bad_shapes_are_named():
  with pytest.raises(ValueError, match='too small for radius 10'):
    affinity.edge_to_affinity(np.zeros((1, 9, 40), np.float32), 10)
  with pytest.raises(ValueError, match='label must be'):
    affinity.pair_labels(np.zeros((9, 40), np.int32))
  with pytest.raises(ValueError, match='radius'):
    affinity.search_paths(2.5)
  labels = affinity.pair_labels(np.zeros((1, 12, 20), np.int32), 5)
  with pytest.raises(ValueError, match="labels\\['bg_pos'\\]"):
    affinity.affinity_loss(jnp.zeros((1, 3, 3, 34)), labels)
