"""bench/torch_step.py does the work of recurseed_jax.method: same values on small random inputs.

The PyTorch-eager step is the baseline of bench/train_step.py; these checks keep the benchmark
comparing the same computation (seeds, SCG, certainty filter, CertainMix, losses) on both sides.
Layouts differ (ours NHWC, torch NCHW), so inputs are transposed on the way in.
"""

import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from bench import torch_step
from configs import default
from recurseed_jax import method
from recurseed_jax import objectives

pytestmark = pytest.mark.usefixtures('one_torch_thread')

B, C, CROP = 3, 4, 32
TOL = dict(rtol=1e-4, atol=1e-4)


def _seed_config():
  config = default.get_config()
  config.rs.refine_stride = 8  # the OS8 features' resolution: SCG on 4 x 4 pixels
  config.rs.seed_mix = 0.25
  return config


# One compile for both recursion-switch cases (the step is traced).
_make_seed = jax.jit(functools.partial(objectives.seed_of, _seed_config()))


def _t(x):
  """NHWC numpy / jax -> NCHW torch (arrays of rank < 4 keep their layout)."""
  x = np.array(x)  # a writable copy: torch wants one
  if x.ndim == 4:
    x = x.transpose(0, 3, 1, 2)
  return torch.from_numpy(np.ascontiguousarray(x))


def _nhwc(x):
  x = x.detach().numpy()
  return x.transpose(0, 2, 3, 1) if x.ndim == 4 else x


def _labels(rng):
  labels = (rng.random((B, C)) < 0.5).astype(np.float32)
  labels[np.arange(B), rng.integers(0, C, B)] = 1.0  # at least one class per image
  return labels


def _hard(rng, size=CROP):
  """A hard map with blobs of present classes, background, and ignored pixels."""
  hard = np.zeros((B, size, size), np.int32)
  for i in range(B):
    for c in range(C):
      y, x = rng.integers(0, size - 10, 2)
      hard[i, y:y + 10, x:x + 10] = c + 1
  hard[rng.random(hard.shape) < 0.1] = 255
  return hard


def _outputs(rng):
  """Fake network outputs: OS8 CAM, stride-4 seg, features of stages 2-5 at OS8 (NHWC)."""
  os8, os4 = CROP // 8, CROP // 4
  return dict(
      cam=3 * rng.normal(size=(B, os8, os8, C)).astype(np.float32),
      seg=4 * rng.normal(size=(B, os4, os4, C + 1)).astype(np.float32),
      logits=rng.normal(size=(B, C)).astype(np.float32),
      features={f'stage{k}': rng.normal(size=(B, os8, os8, 8 * k)).astype(np.float32)
                for k in (2, 3, 4, 5)})


def _torch_out(out):
  return dict(cam=_t(out['cam']), seg=_t(out['seg']), logits=_t(out['logits']),
              features={k: _t(v) for k, v in out['features'].items()})


def _jax_out(out):
  return jax.tree.map(jnp.asarray, out)


def test_seeds_and_resize():
  rng = np.random.default_rng(0)
  out, labels = _outputs(rng), _labels(rng)
  np.testing.assert_allclose(_nhwc(torch_step.cam_seed(_t(out['cam']), _t(labels))),
                             method.cam_seed(out['cam'], labels), **TOL)
  np.testing.assert_allclose(_nhwc(torch_step.seg_seed(_t(out['seg']), _t(labels))),
                             method.seg_seed(out['seg'], labels), **TOL)
  for size in ((2, 2), (8, 8), (32, 32), (6, 10)):  # down, same, up, odd factors
    np.testing.assert_allclose(_nhwc(torch_step.resize(_t(out['seg']), size)),
                               method.resize(out['seg'], size), **TOL)


def test_scg():
  rng = np.random.default_rng(1)
  feats = [rng.normal(size=(B, 6, 6, d)).astype(np.float32) + 0.5 for d in (8, 16)]
  seed = rng.random((B, 6, 6, C)).astype(np.float32) ** 2
  seed[0, ..., 1] = 0.0  # an absent class stays zero
  kwargs = dict(first_th=0.3, second_th=0.1, fg_th=0.3, bg_th=0.05, iteration=2,
                second_weight=1.0)
  # Jitted: one compile instead of one per eager op keeps the test fast.
  ours = jax.jit(functools.partial(method.scg, **kwargs))(feats, seed)
  theirs = torch_step.scg([_t(f) for f in feats], _t(seed), **kwargs)
  np.testing.assert_allclose(_nhwc(theirs), ours, **TOL)
  assert float(jnp.max(ours)) > 0.5  # not a vacuous all-zero comparison


def test_hard_labels():
  rng = np.random.default_rng(2)
  seed = rng.random((B, 8, 8, C)).astype(np.float32) ** 3
  valid = rng.random((B, 8, 8)) > 0.2
  ours = method.hard_labels(seed, 0.55, 0.10, valid=valid)
  theirs = torch_step.hard_labels(_t(seed), 0.55, 0.10, valid=_t(valid))
  np.testing.assert_array_equal(theirs.numpy(), ours)
  assert {0, 255} <= set(np.unique(ours).tolist()) and np.max(ours[ours != 255]) > 0


@pytest.mark.parametrize('min_area', [0.01, 0.2])
def test_mix_batch(min_area):
  rng = np.random.default_rng(3)
  images = rng.normal(size=(B, CROP, CROP, 3)).astype(np.float32)
  hard, labels = _hard(rng), _labels(rng)
  key = jax.random.PRNGKey(7)
  ours = jax.jit(functools.partial(method.mix_batch, kind='certainmix', class_prob=0.5,
                                   min_area=min_area))(key, images, hard, labels)
  # The random bits method.mix_batch draws from its key, handed to the torch port.
  k_perm, k_cls = jax.random.split(key)
  perm = np.asarray(jax.random.permutation(k_perm, B))
  draws = np.asarray(jax.random.uniform(k_cls, (B, C)))
  theirs = torch_step.mix_batch(_t(images), _t(hard), _t(labels), _t(perm), _t(draws),
                                class_prob=0.5, min_area=min_area)
  np.testing.assert_allclose(_nhwc(theirs[0]), ours[0], **TOL)
  for a, b in zip(theirs[1:], ours[1:]):
    np.testing.assert_array_equal(a.numpy(), b)
  assert float(jnp.mean(ours[3])) > 0  # something was pasted


def test_losses():
  rng = np.random.default_rng(4)
  out, labels = _outputs(rng), _labels(rng)
  hard = _hard(rng)
  np.testing.assert_allclose(
      torch_step.multilabel_soft_margin(_t(out['logits']), _t(labels)).item(),
      method.multilabel_soft_margin(out['logits'], labels), **TOL)
  np.testing.assert_allclose(
      torch_step.seg_cross_entropy(_t(out['seg']), _t(hard)).item(),
      method.seg_cross_entropy(out['seg'], hard), **TOL)
  all_ignored = np.full_like(hard, 255)
  assert torch_step.seg_cross_entropy(_t(out['seg']), _t(all_ignored)).item() == 0.0
  probs = jax.nn.softmax(out['seg'], axis=-1)[..., 1:]
  for kind in ('l1', 'mse'):
    np.testing.assert_allclose(
        torch_step.cam_loss(_t(out['cam']), _t(probs), _t(labels), kind=kind).item(),
        method.cam_loss(out['cam'], probs, labels, kind=kind), **TOL)


@pytest.mark.parametrize('step', [0, 500])  # before / after the recursion switch
def test_make_seed_and_supervised_losses(step):
  config = _seed_config()
  rng = np.random.default_rng(5)
  out, labels = _outputs(rng), _labels(rng)
  images = rng.normal(size=(B, CROP, CROP, 3)).astype(np.float32)
  valid = np.ones((B, CROP, CROP), bool)
  valid[:, :, -4:] = False
  seed, hard = _make_seed(_jax_out(out), images, labels, valid, step)
  t_seed, t_hard = torch_step.make_seed(config, _torch_out(out), _t(labels), _t(valid), step,
                                        (CROP, CROP))
  np.testing.assert_allclose(_nhwc(t_seed), seed, **TOL)
  # Hard labels may only differ where the best score sits on a threshold (none here).
  np.testing.assert_array_equal(t_hard.numpy(), hard)

  hard = _hard(rng)
  total, terms = objectives.supervised_losses(
      config, _jax_out(out), hard, labels, (CROP, CROP), method.ratio)
  t_total, t_terms = torch_step.supervised_losses(config, _torch_out(out), _t(hard), _t(labels),
                                                  (CROP, CROP))
  np.testing.assert_allclose(t_total.item(), total, **TOL)
  for k, v in terms.items():
    np.testing.assert_allclose(t_terms[k].item(), v, **TOL)


@pytest.mark.slow  # over 5 s; the module keeps fast tests
def test_train_step_runs():
  """One eager step of a tiny network with CertainMix: finite loss, parameters move."""
  config = default.get_config()
  config.model.width = 8
  rng = np.random.default_rng(6)
  step = torch_step.TorchTrainStep(config, C, 'cpu')
  before = [p.detach().clone() for p in step.model.parameters()]
  images = _t(rng.normal(size=(B, CROP, CROP, 3)).astype(np.float32))
  loss = step(images, _t(_labels(rng)), torch.ones((B, CROP, CROP), dtype=torch.bool),
              use_mix=True)
  assert np.isfinite(loss.item())
  assert any(not torch.equal(a, p) for a, p in zip(before, step.model.parameters()))
