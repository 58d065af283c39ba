"""SCG against a PyTorch re-derivation of the authors' SCG (RecurSeed_and_EdgePredictMix,
class `SCG` in core/inferences.py at commit 4fbc05c), written here from reading it.

What the authors' code does, as we read it (batched [B, HW, HW] tensors, so their "normalise"
over dim 1 is a sum over the row index: every column sums to one):
- n = f / (||f|| + 1e-10); SC = relu(n n^T), entries < first_th zeroed; SC1 = SC / column sums;
- the diagonal of SC zeroed, SC / column sums; SC2 = that, then `iteration` times
  SC2 = (SC2 @ SC) / column sums; entries < second_th / HW zeroed;
- per level HSC = max(SC1, w * SC2) / column sums; levels summed;
- per class: the columns of pixels with seed >= fg_th, each min-max normalised over rows,
  summed, min-max over the image; likewise for seed <= bg_th; relu(fg - bg), min-max.
"""

import jax
import numpy as np
import pytest

from recurseed_jax import method

torch = pytest.importorskip('torch')


def torch_scg(feats, cams, first_th, second_th, fg_th, bg_th, iteration, weight):
  """feats: list of [B, D, h, w] tensors; cams [B, C, h, w]; returns [B, C, h, w] (float32)."""
  eps = 1e-10

  def col(a):  # [B, HW, HW]: each column (fixed last index) divided by its sum
    return a / (a.sum(dim=1, keepdim=True) + eps)

  def mm(v):  # one min-max over a whole vector
    return (v - v.min()) / (v.max() - v.min() + eps)

  b, c, h, w = cams.shape
  hw = h * w
  total = 0
  for f in feats:
    x = f.flatten(2).transpose(1, 2)  # [B, HW, D]
    n = x / (x.norm(dim=2, keepdim=True) + eps)
    sc = torch.relu(torch.bmm(n, n.transpose(1, 2)))
    sc = torch.where(sc < first_th, torch.zeros_like(sc), sc)
    sc1 = col(sc)
    off = col(sc * (1 - torch.eye(hw)).unsqueeze(0))
    sc2 = off
    for _ in range(iteration):
      sc2 = col(torch.bmm(sc2, off))
    sc2 = torch.where(sc2 < second_th / hw, torch.zeros_like(sc2), sc2)
    total = total + col(torch.maximum(sc1, weight * sc2))
  out = torch.zeros(b, c, hw)
  for i in range(b):
    for k in range(c):
      m = cams[i, k].flatten()
      parts = []
      for chosen in (m >= fg_th, m <= bg_th):
        if chosen.any():
          cols = total[i][:, chosen]  # [HW, n]
          lo, hi = cols.min(dim=0, keepdim=True)[0], cols.max(dim=0, keepdim=True)[0]
          parts.append(mm(((cols - lo) / (hi - lo + eps)).sum(dim=1)))
        else:
          parts.append(torch.zeros(hw))
      out[i, k] = mm(torch.relu(parts[0] - parts[1]))
  return out.view(b, c, h, w)


def _inputs(seed, b, h, w, c):
  rng = np.random.default_rng(seed)
  f1 = np.abs(rng.normal(size=(b, h, w, 16))).astype(np.float32)  # post-ReLU like features
  f2 = np.abs(rng.normal(size=(b, h, w, 8))).astype(np.float32)
  f2[:, : h // 2] += 1.0  # structure: the top half correlates
  seeds = rng.random((b, h, w, c)).astype(np.float32)
  seeds[0, ..., 1] = 0.0  # an absent class
  seeds[-1, ..., 2] *= 0.25  # present, but no pixel reaches fg_th
  return [f1, f2], seeds


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _theirs(feats, seeds, dtype, **knobs):
  with torch.no_grad():
    out = torch_scg([_nchw(f).to(dtype) for f in feats], _nchw(seeds).to(dtype), **knobs)
  return out.numpy().transpose(0, 2, 3, 1)


def _assert_agrees(ours, feats, seeds, **knobs):
  """Ours against torch float32 to 1e-5 of the values' scale (their max is 1), or, where the
  thresholds and min-max divisions make the inputs ill-conditioned, to 4x the distance between
  torch float32 and float64 on the same inputs: no float32 code can do better than that."""
  t32 = _theirs(feats, seeds, torch.float32, **knobs)
  t64 = _theirs(feats, seeds, torch.float64, **knobs)
  assert t32.max() == pytest.approx(1.0, rel=1e-5)  # the outputs span [0, 1]
  scale = np.abs(t32).max()
  tol = max(1e-5 * scale, 4 * float(np.abs(t32 - t64).max()))
  np.testing.assert_allclose(ours, t32, rtol=0, atol=tol)
  return tol


@pytest.mark.parametrize('iteration', [1, 2])
@pytest.mark.parametrize('size', [(7, 9), (12, 10)])
def test_scg_matches_torch_rederivation(iteration, size):
  feats, seeds = _inputs(iteration * 100 + size[0], 2, *size, 4)
  knobs = dict(first_th=0.5, second_th=0.1, fg_th=0.3, bg_th=0.05)  # the authors' defaults
  ours = np.asarray(jax.jit(lambda f, s: method.scg(f, s, iteration=iteration, **knobs))(
      feats, seeds))
  tol = _assert_agrees(ours, feats, seeds, iteration=iteration, weight=1.0, **knobs)
  assert tol <= 2e-5  # these inputs are well conditioned: the 1e-5 bound is what is tested
  assert not ours[0, ..., 1].any() and not ours[-1, ..., 2].any()


def test_scg_second_weight_and_thresholds_match_torch():
  feats, seeds = _inputs(7, 1, 6, 8, 3)
  knobs = dict(first_th=0.3, second_th=0.5, fg_th=0.5, bg_th=0.2)
  ours = np.asarray(method.scg(feats, seeds, iteration=1, second_weight=2.0, **knobs))
  _assert_agrees(ours, feats, seeds, iteration=1, weight=2.0, **knobs)
