"""Tests of recurseed_jax.models: shapes, parameter counts, BN / dropout modes, labelling.

Kept fast on CPU: shape checks only trace (jax.eval_shape / make_jaxpr), numeric checks run
jitted, and keys use the 'rbg' PRNG, whose initialisers compile in a fraction of threefry's time.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from recurseed_jax import config_lib
from recurseed_jax import models
from recurseed_jax.models import DeepLabNet
from recurseed_jax.models import RecurSeedNet
from recurseed_jax.models import ResNet

NUM_CLASSES = 5
TINY = dict(stage_sizes=(1, 1, 1, 1), width=8)
HEAD = dict(aspp_channels=16, aspp_rates=(1, 2, 3), low_level_channels=8, decoder_channels=16)


def _key(seed=0):
  return jax.random.key(seed, impl='rbg')


def _net(output_stride=16, dtype=jnp.float32):
  return RecurSeedNet(NUM_CLASSES, output_stride=output_stride, dtype=dtype, **TINY, **HEAD)


def _images(size=64, batch=2, seed=0):
  return jnp.asarray(np.random.RandomState(seed).randn(batch, size, size, 3), jnp.float32)


def _shapes(model, size=64, batch=2):
  """(outputs, variables) as ShapeDtypeStructs: traces only, no compilation."""
  return jax.eval_shape(lambda: model.init_with_output(_key(), _images(size, batch)))


@functools.lru_cache(maxsize=None)
def _init():
  # Output stride and dtype change no parameter, so one init serves every variant.
  return jax.jit(_net().init)(_key(), _images())


def _apply(output_stride=16, train=False, dtype=jnp.float32):
  return _jitted_apply(output_stride, train, dtype)  # one cache key per variant


@functools.lru_cache(maxsize=None)
def _jitted_apply(output_stride, train, dtype):
  model = _net(output_stride, dtype)
  def apply(variables, x, seed):
    return model.apply(variables, x, train=train, rngs={'dropout': _key(seed)},
                       mutable=['batch_stats'])
  return jax.jit(apply)


def _torch_out(size, kernel, stride, pad):
  # PyTorch's Conv2d / MaxPool2d output size (dilation 1).
  return (size + 2 * pad - (kernel - 1) - 1) // stride + 1


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def _conv_dilations(jaxpr):
  """rhs_dilation of every conv in a (closed) jaxpr, nested jaxprs included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'conv_general_dilated':
      found.append(tuple(eqn.params['rhs_dilation']))
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else [param]:
        if hasattr(sub, 'eqns'):
          found += _conv_dilations(sub)
        elif hasattr(sub, 'jaxpr'):
          found += _conv_dilations(sub.jaxpr)
  return found


# --- ResNet --------------------------------------------------------------------------------------


@pytest.mark.parametrize('output_stride, strides', [
    (32, (4, 8, 16, 32)), (16, (4, 8, 16, 16)), (8, (4, 8, 8, 8))])
def test_resnet_stage_shapes(output_stride, strides):
  out, _ = _shapes(ResNet(**TINY, output_stride=output_stride))
  assert sorted(out) == ['stage2', 'stage3', 'stage4', 'stage5']
  for i, stride in enumerate(strides):
    assert out[f'stage{i + 2}'].shape == (2, 64 // stride, 64 // stride, 8 * 2**i * 4)


@pytest.mark.parametrize('size', [63, 65, 97])
def test_resnet_odd_sizes_match_pytorch(size):
  # Explicit padding: output sizes follow PyTorch's floor arithmetic, not XLA 'SAME'.
  s = _torch_out(_torch_out(size, 7, 2, 3), 3, 2, 1)
  expected = [s]
  for _ in range(3):
    s = _torch_out(s, 3, 2, 1)
    expected.append(s)
  out, _ = _shapes(ResNet(**TINY, output_stride=32), size, 1)
  assert [out[f'stage{i}'].shape[1] for i in range(2, 6)] == expected


@pytest.mark.parametrize('output_stride, expected', [
    (32, {1}), (16, {1, 2}), (8, {1, 2, 4})])
def test_resnet_dilations(output_stride, expected):
  model = ResNet((2, 2, 2, 2), width=8, output_stride=output_stride)
  _, variables = _shapes(model, 32, 1)
  dilations = _conv_dilations(jax.make_jaxpr(
      lambda v, x: model.apply(v, x))(variables, _images(32, 1)).jaxpr)
  assert len(dilations) == 1 + 8 * 3 + 4  # stem, 3 convs per block, 4 downsamples
  assert {d[0] for d in dilations} == expected
  # torchvision's replace_stride_with_dilation: first block of a dilated stage keeps the
  # previous dilation, same parameters.
  tv = ResNet((2, 2, 2, 2), width=8, output_stride=output_stride, torchvision_dilation=True)
  _, tv_variables = _shapes(tv, 32, 1)
  assert (jax.tree_util.tree_map(lambda a: a.shape, tv_variables)
          == jax.tree_util.tree_map(lambda a: a.shape, variables))
  tv_dilations = _conv_dilations(jax.make_jaxpr(
      lambda v, x: tv.apply(v, x))(variables, _images(32, 1)).jaxpr)
  if output_stride == 16:
    assert sum(d == (2, 2) for d in dilations) == 2  # layer4_{0,1}/conv2
    assert sum(d == (2, 2) for d in tv_dilations) == 1  # only layer4_1/conv2
  if output_stride == 8:
    assert sum(d == (2, 2) for d in dilations) == 2  # layer3_{0,1}/conv2
    assert sum(d == (4, 4) for d in dilations) == 2  # layer4_{0,1}/conv2
    assert sum(d == (2, 2) for d in tv_dilations) == 2  # layer3_1/conv2, layer4_0/conv2
    assert sum(d == (4, 4) for d in tv_dilations) == 1  # layer4_1/conv2


def test_resnet_downsample_blocks_and_names():
  _, variables = _shapes(ResNet((2, 2, 2, 2), width=8, output_stride=8), 32, 1)
  params = variables['params']
  assert set(params) == {'conv1', 'bn1', 'layer1_0', 'layer1_1', 'layer2_0', 'layer2_1',
                         'layer3_0', 'layer3_1', 'layer4_0', 'layer4_1'}
  assert set(variables['batch_stats']['bn1']) == {'mean', 'var'}
  for stage in range(1, 5):
    # Every first block changes the channels (stem 8 -> 32 in layer1), the rest don't.
    assert {'downsample_conv', 'downsample_bn'} <= set(params[f'layer{stage}_0'])
    assert 'downsample_conv' not in params[f'layer{stage}_1']
  assert set(params['layer1_1']) == {'conv1', 'bn1', 'conv2', 'bn2', 'conv3', 'bn3'}
  assert params['conv1']['kernel'].shape == (7, 7, 3, 8)
  assert params['layer2_0']['conv2']['kernel'].shape == (3, 3, 16, 16)
  assert params['layer2_0']['conv3']['kernel'].shape == (1, 1, 16, 64)
  assert params['layer2_0']['downsample_conv']['kernel'].shape == (1, 1, 32, 64)


@pytest.mark.parametrize('stage_sizes, expected', [
    ((3, 4, 6, 3), 23_508_032), ((3, 4, 23, 3), 42_500_160)])
def test_resnet_param_count_matches_torchvision(stage_sizes, expected):
  # torchvision resnet50 / resnet101 parameter count without fc; shapes only, no compute.
  _, variables = _shapes(ResNet(stage_sizes, width=64, output_stride=16), 32, 1)
  assert _count(variables['params']) == expected


# --- RecurSeedNet / DeepLabNet ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize('output_stride', [16, 8])
def test_recurseed_net_outputs(output_stride):
  out, _ = _apply(output_stride)(_init(), _images(), 0)
  h = 64 // output_stride
  assert set(out) == {'features', 'cam', 'logits', 'seg'}
  assert out['cam'].shape == (2, h, h, NUM_CLASSES)
  assert out['logits'].shape == (2, NUM_CLASSES)
  assert out['seg'].shape == (2, 16, 16, NUM_CLASSES + 1)
  assert out['features']['stage2'].shape[1:3] == (16, 16)
  assert out['features']['stage5'].shape[1:3] == (h, h)
  for key in ('cam', 'logits', 'seg'):
    assert out[key].dtype == jnp.float32
  np.testing.assert_allclose(out['logits'], out['cam'].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)


def test_param_tree_top_level():
  _, variables = _shapes(_net())
  assert set(variables) == {'params', 'batch_stats'}
  params = variables['params']
  assert set(params) == {'backbone', 'classifier', 'seg_head'}
  assert set(params['classifier']) == {'kernel'}
  assert params['classifier']['kernel'].shape == (1, 1, 256, NUM_CLASSES)
  head = params['seg_head']
  assert set(head) == {'aspp', 'reduce', 'fuse1', 'fuse2', 'classifier'}
  assert set(head['aspp']) == {'branch0', 'branch1', 'branch2', 'branch3', 'pool', 'project'}
  assert set(head['aspp']['branch1']) == {'conv', 'bn'}
  assert set(head['aspp']['branch1']['conv']) == {'kernel'}  # bias-free
  assert head['reduce']['conv']['kernel'].shape == (1, 1, 32, 8)
  assert head['fuse1']['conv']['kernel'].shape == (3, 3, 16 + 8, 16)
  assert head['classifier']['kernel'].shape == (3, 3, 16, NUM_CLASSES + 1)
  assert set(head['classifier']) == {'kernel'}


@pytest.mark.slow  # over 5 s; the module keeps fast tests
def test_batch_norm_stats_update_only_in_train():
  variables, x = _init(), _images()
  _, train_state = _apply(train=True)(variables, x, 1)
  changed = jax.tree_util.tree_map(lambda a, b: not np.allclose(a, b),
                                   variables['batch_stats'], train_state['batch_stats'])
  assert all(jax.tree_util.tree_leaves(changed))
  _, eval_state = _apply(train=False)(variables, x, 1)
  same = jax.tree_util.tree_map(np.array_equal, variables['batch_stats'],
                                eval_state['batch_stats'])
  assert all(jax.tree_util.tree_leaves(same))


@pytest.mark.slow  # over 5 s; the module keeps fast tests
def test_dropout_only_in_train():
  variables, x = _init(), _images()
  np.testing.assert_array_equal(_apply(train=False)(variables, x, 1)[0]['seg'],
                                _apply(train=False)(variables, x, 2)[0]['seg'])
  # Same batch statistics in both train passes, so any difference comes from dropout.
  a, b = _apply(train=True)(variables, x, 1)[0], _apply(train=True)(variables, x, 2)[0]
  assert not np.allclose(a['seg'], b['seg'])
  np.testing.assert_array_equal(a['cam'], b['cam'])  # no dropout on the CAM path
  # Eval needs no dropout rng at all (tracing would raise otherwise).
  jax.eval_shape(lambda: _net().apply(variables, x, train=False))


def test_bf16_outputs_are_float32():
  # Parameters stay float32 whatever the compute dtype, so the float32 ones serve.
  _, variables = _shapes(_net(dtype=jnp.bfloat16))
  assert {x.dtype for x in jax.tree_util.tree_leaves(variables)} == {np.dtype('float32')}
  out, _ = _apply(dtype=jnp.bfloat16)(_init(), _images(), 0)
  for key in ('cam', 'logits', 'seg'):
    assert out[key].dtype == jnp.float32
    assert np.all(np.isfinite(out[key]))
  assert out['features']['stage5'].dtype == jnp.bfloat16


@pytest.mark.parametrize('head, stride', [('v3plus', 4), ('v2', 8)])
def test_deeplab_net(head, stride):
  model = DeepLabNet(NUM_CLASSES, **TINY, output_stride=8, head=head, v2_rates=(1, 2, 3, 4),
                     **HEAD)
  out, variables = _shapes(model)
  assert set(out) == {'features', 'seg'}
  assert out['seg'].shape == (2, 64 // stride, 64 // stride, NUM_CLASSES + 1)
  assert out['seg'].dtype == jnp.float32
  assert set(variables['params']) == {'backbone', 'head'}


def test_cross_replica_batch_norm_traces():
  # bn_axis_name reaches every BatchNorm: traced under a named vmap axis (as under pmap).
  model = RecurSeedNet(NUM_CLASSES, **TINY, **HEAD, bn_axis_name='batch')
  _, variables = _shapes(_net())
  x = jnp.zeros((2, 1, 64, 64, 3))
  def apply(v, x):
    return model.apply(v, x, train=True, rngs={'dropout': _key()}, mutable=['batch_stats'])
  out, state = jax.eval_shape(jax.vmap(apply, (None, 0), axis_name='batch'), variables, x)
  assert out['seg'].shape == (2, 1, 16, 16, NUM_CLASSES + 1)
  assert set(state['batch_stats']) == {'backbone', 'seg_head'}
  with pytest.raises(NameError):  # unbound axis: proof the name is used
    jax.eval_shape(apply, variables, x[0])


# --- labelling and config --------------------------------------------------------------------


def test_param_groups_and_decay_mask():
  params = _shapes(_net())[1]['params']
  groups, mask = models.param_groups(params), models.decay_mask(params)
  assert jax.tree_util.tree_structure(groups) == jax.tree_util.tree_structure(params)
  assert jax.tree_util.tree_structure(mask) == jax.tree_util.tree_structure(params)
  flat_params = jax.tree_util.tree_flatten_with_path(params)[0]
  flat_groups = jax.tree_util.tree_leaves(groups)
  flat_mask = jax.tree_util.tree_leaves(mask)
  assert len(flat_params) == len(flat_groups) == len(flat_mask)
  for (path, _), group, decay in zip(flat_params, flat_groups, flat_mask):
    keys = [p.key for p in path]
    assert group == ('backbone' if keys[0] == 'backbone' else 'head')
    assert decay == (keys[-1] == 'kernel')
    assert keys[-1] in ('kernel', 'bias', 'scale')
  assert set(flat_groups) == {'backbone', 'head'}
  assert set(flat_mask) == {True, False}
  # The whole variables dict labels the same way.
  assert models.param_groups({'params': params})['params'] == groups


def test_decay_mask_v2_biases():
  _, variables = _shapes(DeepLabNet(NUM_CLASSES, **TINY, head='v2', v2_rates=(1, 2)), 32, 1)
  params = variables['params']
  assert models.decay_mask(params)['head'] == {'conv0': {'kernel': True, 'bias': False},
                                               'conv1': {'kernel': True, 'bias': False}}
  assert set(jax.tree_util.tree_leaves(models.param_groups(params)['head'])) == {'head'}
  assert not models.decay_mask(params)['backbone']['bn1']['scale']


def test_build_model_from_config():
  from configs.default import get_config
  config = get_config()
  model = models.build_model(config.model, config.data.num_classes)
  assert isinstance(model, RecurSeedNet)
  assert model.num_classes == config.data.num_classes
  assert model.stage_sizes == tuple(config.model.stage_sizes)
  assert model.output_stride == config.model.output_stride
  assert model.low_level_channels == config.model.low_level_channels
  assert model.decoder_dropout == tuple(config.model.decoder_dropout)
  # A hand-made ConfigDict holding lists works too, once completed from the defaults.
  cfg = config_lib.complete(ml_collections.ConfigDict(dict(
      stage_sizes=[1, 1, 1, 1], width=8, output_stride=16, aspp_channels=16,
      aspp_rates=[1, 2, 3], low_level_channels=8, decoder_channels=16, aspp_dropout=0.5,
      decoder_dropout=[0.5, 0.1])), config_lib.defaults().model)
  model = models.build_model(cfg, NUM_CLASSES, dtype=jnp.bfloat16, bn_axis_name='batch')
  assert model.bn_axis_name == 'batch' and model.dtype == jnp.bfloat16
  out, _ = _shapes(model.clone(bn_axis_name=None))
  assert out['seg'].shape == (2, 16, 16, NUM_CLASSES + 1)
