"""Numeric parity with PyTorch: torchvision / authors' layouts, random weights, imported.

Each test builds a PyTorch module with the exact state_dict keys of torchvision's ResNets or the
RS+EPM authors' networks (tests/torch_reference.py), gives it random weights and BatchNorm
statistics, imports its state_dict through recurseed_jax.models.weights and compares outputs on
the same input: backbone stages, CAM, class logits, segmentation logits, in fp32, to 2e-4 of each
output's scale (its largest magnitude, at least 1): float32 rounding through a ResNet-50 differs
by ~1e-4 of the scale between CPUs (summation orders of their convolution kernels).
Weights are shared per architecture; output stride changes no parameter. (The random weights
keep residual branches small, as trained ResNets do: with every BatchNorm scale near 1, fp32
rounding compounds through ResNet-101 and torch itself lands ~1e-3 from its float64 result.)
Run with -s to print the largest differences.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')

from recurseed_jax import models
from recurseed_jax.models import weights
from recurseed_jax.models.norm import BatchNorm
import reference
import torch_reference as tr

pytestmark = pytest.mark.usefixtures('one_torch_thread')

TOL = 2e-4  # relative to the values' scale (_tolerance)
R50, R101 = (3, 4, 6, 3), (3, 4, 23, 3)
MAX_DIFF = {}  # largest difference per test, printed by test_zz_report with -s


def _nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


def _images(size, batch=1, seed=0):
  return np.random.RandomState(seed).randn(batch, 3, size, size).astype(np.float32)


def _like(model, size=64):
  """Zero variables of `model`'s shapes (traced once per architecture, never compiled)."""
  key = (type(model).__name__, tuple(model.stage_sizes), model.width,
         getattr(model, 'num_classes', 0), getattr(model, 'head', ''),
         getattr(model, 'low_level_channels', 0), getattr(model, 'aspp_channels', 0))
  return _zeros_like_variables(key, model.clone(output_stride=16), size)


@functools.lru_cache(maxsize=None)
def _shapes(key, model, size):
  del key  # the cache key: what the parameter shapes depend on
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))


def _zeros_like_variables(key, model, size):
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), _shapes(key, model, size))


def _tolerance(ref):
  """TOL times the values' scale: their largest magnitude, at least 1."""
  return TOL * max(1.0, float(np.max(np.abs(ref))) if np.size(ref) else 1.0)


def _compare(name, ours, theirs):
  """Max abs difference of two {key: array or dict} trees (theirs NCHW torch, ours NHWC)."""
  worst = 0.0
  for key, ref in theirs.items():
    if isinstance(ref, dict):
      worst = max(worst, _compare(f'{name}/{key}', ours[key], ref))
      continue
    ref = ref.detach().numpy()
    ref = ref.transpose(0, 2, 3, 1) if ref.ndim == 4 else ref
    got = np.asarray(ours[key])
    assert got.shape == ref.shape, f'{name}/{key}: {got.shape} vs {ref.shape}'
    diff = float(np.max(np.abs(got - ref)))
    assert diff <= _tolerance(ref), (f'{name}/{key}: max abs diff {diff:.2e} (scale '
                                     f'{np.abs(ref).max():.2f})')
    worst = max(worst, diff)
  MAX_DIFF[name] = max(MAX_DIFF.get(name, 0.0), worst)
  return worst


@functools.lru_cache(maxsize=None)
def _torch_net(kind, layers, output_stride):
  """A randomised torch network; other output strides reuse the OS16 weights."""
  build = {'resnet': lambda os: tr.TorchResNet(layers, os, 'torchvision'),
           'rsepm': lambda os: tr.TorchRecurSeedNet(20, layers, os),
           'v3plus': lambda os: tr.TorchDeepLabV3Plus(20, layers, os),
           'v2': lambda os: tr.TorchDeepLabV2(20, layers, os)}[kind]
  net = build(output_stride)
  if output_stride == 16:
    return tr.randomize_(net, seed=len(layers) + sum(layers))
  net.load_state_dict(_torch_net(kind, layers, 16).state_dict())
  return net.eval()


def _rates(output_stride):
  return (6, 12, 18) if output_stride == 16 else (12, 24, 36)




def _run(model, variables, x, train=False):
  x = jnp.asarray(x.transpose(0, 2, 3, 1))
  fn = functools.partial(model.apply, train=train, mutable=['batch_stats'] if train else False)
  return jax.jit(fn).lower(variables, x).compile(reference.FAST_COMPILE)(variables, x)


# ResNet-101 at OS16 runs in the DeepLab tests below (with the authors' dilations).
@pytest.mark.parametrize('layers, output_stride', [(R50, 16), (R50, 8), (R101, 8)],
                         ids=['r50-os16', 'r50-os8', 'r101-os8'])
@pytest.mark.slow
def test_torchvision_resnet(layers, output_stride, tmp_path):
  net = _torch_net('resnet', layers, output_stride)
  model = models.ResNet(layers, output_stride=output_stride, dilation_scheme='torchvision')
  size = 64
  if layers == R50 and output_stride == 16:  # through a real .pth file once
    path = str(tmp_path / 'resnet50.pth')
    state = dict(net.state_dict(), **{'fc.weight': torch.zeros(1000, 2048),
                                      'fc.bias': torch.zeros(1000)})
    torch.save(state, path)
    variables = weights.apply_init(f'imagenet:{path}', _like(model, size))
  else:
    variables, _ = weights.import_state_dict('imagenet', tr.state_dict_numpy(net),
                                             _like(model, size))
  x = _images(size)
  with torch.no_grad():
    ref = net(torch.from_numpy(x))
  _compare(f'torchvision_resnet{sum(layers) * 3 + 2}_os{output_stride}', _run(model, variables, x),
           ref)


@pytest.mark.slow
@pytest.mark.parametrize('output_stride', [16, 8])
def test_rsepm_network(output_stride):
  net = _torch_net('rsepm', R50, output_stride)
  model = models.RecurSeedNet(20, R50, output_stride=output_stride,
                              aspp_rates=_rates(output_stride), low_level_channels=256,
                              dilation_scheme='authors')
  size = 65  # odd: PyTorch's floor arithmetic and a non-integer decoder upsampling
  variables, _ = weights.import_state_dict('rsepm', tr.state_dict_numpy(net), _like(model, size))
  x = _images(size, seed=1)
  with torch.no_grad():
    ref = net(torch.from_numpy(x))
  out = _run(model, variables, x)
  assert out['seg'].shape == (1, 17, 17, 21)
  _compare(f'rsepm_r50_os{output_stride}', out, ref)


@pytest.mark.slow
@pytest.mark.parametrize('head', ['v3plus', 'v2'])
@pytest.mark.parametrize('output_stride', [16, 8])
def test_deeplab_r101(head, output_stride):
  net = _torch_net(head, R101, output_stride)
  model = models.DeepLabNet(20, R101, output_stride=output_stride, head=head,
                            aspp_rates=_rates(output_stride), low_level_channels=48,
                            dilation_scheme='authors')
  size = 64
  variables, _ = weights.import_state_dict('deeplab', tr.state_dict_numpy(net),
                                           _like(model, size))
  x = _images(size, seed=2)
  with torch.no_grad():
    ref = net(torch.from_numpy(x))
  _compare(f'deeplab_{head}_r101_os{output_stride}', _run(model, variables, x), ref)


@pytest.mark.parametrize('head', ['v3plus', 'v2'])
def test_heads_with_dilations_inside_the_map(head):
  # At full size the authors' rates exceed a 64-pixel input's feature map (only centre taps
  # count); small rates on a narrow network exercise every dilated tap.
  rates = (2, 3, 5)
  kwargs = dict(layers=(1, 2, 1, 1), output_stride=8, width=8)
  if head == 'v3plus':
    net = tr.TorchDeepLabV3Plus(5, feature_size=16, low_channels=8, aspp_rates=rates, **kwargs)
  else:
    net = tr.TorchDeepLabV2(5, rates=(1, 2, 3, 4), **kwargs)
  tr.randomize_(net, seed=3)
  model = models.DeepLabNet(5, (1, 2, 1, 1), width=8, output_stride=8, head=head,
                            aspp_channels=16, decoder_channels=16, aspp_rates=rates,
                            low_level_channels=8, v2_rates=(1, 2, 3, 4),
                            dilation_scheme='authors')
  variables, _ = weights.import_state_dict('deeplab', tr.state_dict_numpy(net), _like(model, 97))
  x = _images(97, seed=4)
  with torch.no_grad():
    ref = net(torch.from_numpy(x))
  _compare(f'small_{head}_dilated', _run(model, variables, x), ref)


@pytest.mark.slow
def test_train_mode_outputs_and_batch_norm_statistics():
  # One training-mode forward of the full RS+EPM ResNet-50 network (dropout 0 on both sides):
  # same outputs from batch statistics, and the same running statistics afterwards, including
  # the ASPP image-pooling BatchNorm, which sees n = 2 values per channel (unbiased: x2).
  net = tr.TorchRecurSeedNet(20, R50, 16, aspp_dropout=0.0, decoder_dropout=(0.0, 0.0))
  net.load_state_dict(_torch_net('rsepm', R50, 16).state_dict())
  model = models.RecurSeedNet(20, R50, output_stride=16, aspp_rates=(6, 12, 18),
                              low_level_channels=256, aspp_dropout=0.0,
                              decoder_dropout=(0.0, 0.0), dilation_scheme='authors')
  variables, _ = weights.import_state_dict('rsepm', tr.state_dict_numpy(net), _like(model, 64))
  x = _images(64, batch=2, seed=5)
  net.train()
  with torch.no_grad():
    ref = net(torch.from_numpy(x))
  out, state = _run(model, variables, x, train=True)
  _compare('train_mode_rsepm_r50', out, ref)
  # The updated statistics, read back through the importer's name mapping.
  updated = tr.state_dict_numpy(net)
  expected = weights.expected_keys('rsepm', variables)
  flat = jax.tree_util.tree_flatten_with_path(state['batch_stats'])[0]
  stats = {('batch_stats',) + tuple(p.key for p in path): v for path, v in flat}
  worst = 0.0
  for key, (path, _) in expected.items():
    if path[0] == 'batch_stats':
      diff = float(np.max(np.abs(np.asarray(stats[path]) - updated[key])))
      assert diff <= _tolerance(updated[key]), f'{key}: running statistic differs by {diff:.2e}'
      worst = max(worst, diff)
  MAX_DIFF['train_mode_running_stats'] = worst
  pool_var = np.asarray(stats[('batch_stats', 'seg_head', 'aspp', 'pool', 'bn', 'var')])
  np.testing.assert_allclose(pool_var, updated['aspp.global_avg_pool.1.bn.running_var'],
                             rtol=1e-4, atol=1e-5)


def test_batch_norm_matches_torch_not_flax():
  # n = 2 * 3 * 3 = 18 values per channel: torch's unbiased running variance is 18/17 of the
  # biased one flax.linen.BatchNorm keeps; ours follows torch over several steps.
  rng = np.random.RandomState(6)
  xs = [rng.randn(2, 3, 3, 4).astype(np.float32) * 3 + 1 for _ in range(3)]
  bn = torch.nn.BatchNorm2d(4).train()
  ours = BatchNorm(use_running_average=False)
  theirs = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
  variables = flax_vars = {'params': {'scale': jnp.ones(4), 'bias': jnp.zeros(4)},
                           'batch_stats': {'mean': jnp.zeros(4), 'var': jnp.ones(4)}}
  ours_step = jax.jit(functools.partial(ours.apply, mutable=['batch_stats']))
  flax_step = jax.jit(functools.partial(theirs.apply, mutable=['batch_stats']))
  for x in xs:
    y_ref = bn(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy().transpose(0, 2, 3, 1)
    y, state = ours_step(variables, jnp.asarray(x))
    variables = dict(variables, **state)
    _, flax_state = flax_step(flax_vars, jnp.asarray(x))
    flax_vars = dict(flax_vars, **flax_state)
    np.testing.assert_allclose(y, y_ref, atol=1e-5)
  stats = variables['batch_stats']
  np.testing.assert_allclose(stats['mean'], bn.running_mean.numpy(), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(stats['var'], bn.running_var.numpy(), rtol=1e-6, atol=1e-6)
  assert not np.allclose(flax_vars['batch_stats']['var'], bn.running_var.numpy(), rtol=1e-3)


def test_cross_replica_batch_norm_counts_the_global_batch():
  # Under a named axis the unbiased factor uses the global n (replicas x local values), so
  # split batches update the statistics exactly as the whole batch does.
  x = np.random.RandomState(7).randn(4, 2, 2, 3).astype(np.float32)
  variables = {'params': {'scale': jnp.ones(3), 'bias': jnp.zeros(3)},
               'batch_stats': {'mean': jnp.zeros(3), 'var': jnp.ones(3)}}
  _, ref = jax.jit(functools.partial(BatchNorm().apply, mutable=['batch_stats']))(
      variables, jnp.asarray(x))
  split = BatchNorm(axis_name='r')
  def apply(xi):
    return split.apply(variables, xi, mutable=['batch_stats'])[1]
  got = jax.jit(jax.vmap(apply, axis_name='r'))(jnp.asarray(x.reshape(2, 2, 2, 2, 3)))
  for key in ('mean', 'var'):
    np.testing.assert_allclose(got['batch_stats'][key][0], ref['batch_stats'][key], rtol=1e-6)


def test_zz_report():
  # Runs last in this file: the largest difference seen (visible with pytest -s).
  if MAX_DIFF:
    print('\nlargest parity differences:',
          ', '.join(f'{k} {v:.1e}' for k, v in sorted(MAX_DIFF.items())),
          f'\nmax {max(MAX_DIFF.values()):.2e}')
