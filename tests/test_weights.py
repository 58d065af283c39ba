"""Tests of the weight importer (recurseed_jax/models/weights.py) and its conversion CLI.

Small networks, variables made from traced shapes (nothing compiles), state_dicts written as
.npz files under tmp_path; the .pth cases need torch and skip without it.
"""

import functools
import os
import pickle

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import default
from recurseed_jax import config_lib
from recurseed_jax import convert_weights
from recurseed_jax import models
from recurseed_jax.models import weights

C = 5
TINY = dict(stage_sizes=(1, 1, 1, 1), width=8, aspp_channels=16, aspp_rates=(1, 2, 3),
            low_level_channels=8, decoder_channels=16)


def _rsepm(num_classes=C):
  return models.RecurSeedNet(num_classes, **TINY)


def _deeplab(head, num_classes=C):
  return models.DeepLabNet(num_classes, head=head, v2_rates=(1, 2, 3, 4), **TINY)


@functools.lru_cache(maxsize=None)
def _shapes(model):
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def _variables(model, seed=0):
  """Random numpy variables of `model`'s shapes (distinct values, so mix-ups show)."""
  rng = np.random.RandomState(seed)
  return jax.tree.map(lambda s: rng.randn(*s.shape).astype(s.dtype), _shapes(model))


def _flat(tree):
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _assert_same(a, b):
  fa, fb = _flat(a), _flat(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def _npz(tmp_path, state, name='w.npz'):
  path = str(tmp_path / name)
  np.savez(path, **state)
  return path


# --- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize('kind, model', [
    ('imagenet', _rsepm()), ('rsepm', _rsepm()), ('deeplab', _deeplab('v3plus')),
    ('deeplab', _deeplab('v2'))], ids=['imagenet', 'rsepm', 'deeplab-v3plus', 'deeplab-v2'])
def test_round_trip_through_npz(kind, model, tmp_path):
  source = _variables(model, seed=1)
  state = weights.to_state_dict(kind, source)
  state['fc.weight' if kind == 'imagenet' else 'model.bn1.num_batches_tracked'] = np.zeros(3)
  loaded = weights.apply_init(f'{kind}:{_npz(tmp_path, state)}', _variables(model, seed=2))
  if kind == 'imagenet':  # the backbone only; heads keep their init
    _assert_same(loaded['params']['backbone'], source['params']['backbone'])
    _assert_same(loaded['params']['seg_head'], _variables(model, seed=2)['params']['seg_head'])
  else:
    _assert_same(loaded, source)
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(loaded['params']['backbone']))


def test_torch_names_and_layouts():
  v3 = weights.to_state_dict('rsepm', _variables(_rsepm()))
  assert v3['classifier.weight'].shape == (C, 256, 1, 1)
  assert v3['model.layer1.0.downsample.0.weight'].shape == (32, 8, 1, 1)
  assert v3['model.layer1.0.downsample.1.running_var'].shape == (32,)
  assert v3['aspp.aspp1.conv.weight'].shape == (16, 256, 1, 1)
  assert v3['aspp.aspp4.conv.weight'].shape == (16, 256, 3, 3)
  assert v3['aspp.global_avg_pool.1.bn.running_mean'].shape == (16,)
  assert v3['aspp.block.0.conv.weight'].shape == (16, 16 * 5, 1, 1)
  assert v3['decoder.low_block.conv.weight'].shape == (8, 32, 1, 1)
  assert v3['decoder.classifier.0.conv.weight'].shape == (16, 16 + 8, 3, 3)
  assert v3['decoder.classifier.2.bn.weight'].shape == (16,)
  assert v3['decoder.classifier.4.weight'].shape == (C + 1, 16, 3, 3)
  v2 = weights.to_state_dict('deeplab', _variables(_deeplab('v2')))
  assert {k for k in v2 if not k.startswith('model.')} == {
      f'aspp.aspp{i}.{p}' for i in range(1, 5) for p in ('weight', 'bias')}


@pytest.mark.parametrize('stage_sizes, count', [((3, 4, 6, 3), 265), ((3, 4, 23, 3), 520)])
def test_torchvision_key_set(stage_sizes, count):
  # torchvision resnet50 / resnet101 state_dicts hold 320 / 626 entries: these, plus
  # num_batches_tracked per BatchNorm (53 / 104) and fc.weight, fc.bias.
  shapes = jax.eval_shape(models.ResNet(stage_sizes).init, jax.random.key(0),
                          jnp.zeros((1, 32, 32, 3)))
  keys = weights.expected_keys('imagenet', shapes)
  assert len(keys) == count
  assert {'conv1.weight', 'bn1.running_var', 'layer1.0.conv1.weight', 'layer4.2.bn3.bias',
          'layer3.0.downsample.0.weight', 'layer2.0.downsample.1.running_mean'} <= set(keys)
  assert keys['layer4.0.conv2.weight'][1] == (512, 512, 3, 3)


@pytest.mark.parametrize('model, count', [
    (models.RecurSeedNet(20, (3, 4, 6, 3), low_level_channels=256), 40_969_024),
    (models.DeepLabNet(20, (3, 4, 23, 3), head='v3plus', low_level_channels=48), 59_387_296),
    (models.DeepLabNet(20, (3, 4, 23, 3), head='v2'), 44_048_532),
], ids=['rsepm-r50', 'deeplabv3plus-r101', 'deeplabv2-r101'])
def test_full_size_parameter_counts(model, count):
  # = sum(p.numel() for p in torch_module.parameters()) of the authors' networks (VOC, C = 20).
  params = _shapes(model)['params']
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)) == count


# --- errors ----------------------------------------------------------------------------------


def test_missing_and_unexpected_keys_are_listed(tmp_path):
  state = weights.to_state_dict('rsepm', _variables(_rsepm()))
  del state['model.layer1.0.conv1.weight'], state['aspp.aspp2.bn.running_var']
  state['decoder.extra.weight'] = np.zeros(3)
  with pytest.raises(weights.WeightImportError) as e:
    weights.apply_init(f'rsepm:{_npz(tmp_path, state)}', _variables(_rsepm()))
  message = str(e.value)
  assert 'missing keys (2): aspp.aspp2.bn.running_var, model.layer1.0.conv1.weight' in message
  assert 'unexpected keys (1): decoder.extra.weight' in message


def test_shape_mismatch_names_key_and_both_shapes(tmp_path):
  state = weights.to_state_dict('rsepm', _variables(_rsepm()))
  state['decoder.low_block.conv.weight'] = np.zeros((48, 32, 1, 1), np.float32)
  with pytest.raises(weights.WeightImportError) as e:
    weights.apply_init(f'rsepm:{_npz(tmp_path, state)}', _variables(_rsepm()))
  assert ('shape mismatch for decoder.low_block.conv.weight: checkpoint (48, 32, 1, 1), '
          'model (8, 32, 1, 1)') in str(e.value)
  # Not class-dependent: strict=False does not excuse it.
  with pytest.raises(weights.WeightImportError):
    weights.apply_init(f'rsepm:{_npz(tmp_path, state)}', _variables(_rsepm()), strict=False)


def test_other_class_count_needs_strict_false(tmp_path):
  source = _variables(_rsepm(num_classes=20))
  path = _npz(tmp_path, weights.to_state_dict('rsepm', source))
  target = _variables(_rsepm(num_classes=C), seed=3)
  with pytest.raises(weights.WeightImportError) as e:
    weights.apply_init(f'rsepm:{path}', target)
  assert 'classifier.weight: checkpoint (20, 256, 1, 1), model (5, 256, 1, 1)' in str(e.value)
  assert 'strict=False' in str(e.value)
  loaded = weights.apply_init(f'rsepm:{path}', target, strict=False)
  np.testing.assert_array_equal(loaded['params']['classifier']['kernel'],
                                target['params']['classifier']['kernel'])
  np.testing.assert_array_equal(loaded['params']['seg_head']['classifier']['kernel'],
                                target['params']['seg_head']['classifier']['kernel'])
  _assert_same(loaded['params']['backbone'], source['params']['backbone'])
  _assert_same(loaded['batch_stats'], source['batch_stats'])


def test_wrong_network_for_the_kind(tmp_path):
  path = _npz(tmp_path, weights.to_state_dict('rsepm', _variables(_rsepm())))
  with pytest.raises(weights.WeightImportError, match='DeepLabNet'):
    weights.apply_init(f'deeplab:{path}', _variables(_rsepm()))
  # An authors' checkpoint read as ImageNet weights: named, with a hint.
  with pytest.raises(weights.WeightImportError, match="authors' rsepm checkpoint"):
    weights.apply_init(f'imagenet:{path}', _variables(_rsepm()))


@pytest.mark.parametrize('spec', ['', 'imagenet', 'imagenet:', 'resnet:/x.pth', 'scratch:x'])
def test_bad_spec_names_the_config_key(spec):
  with pytest.raises(ValueError, match=r"model\.init.*'scratch', 'imagenet:<path>'"):
    weights.apply_init(spec, {})


def test_scratch_and_missing_file():
  variables = _variables(_rsepm())
  assert weights.apply_init('scratch', variables) is variables
  with pytest.raises(FileNotFoundError, match='/no/such/weights.npz'):
    weights.apply_init('rsepm:/no/such/weights.npz', variables)


def test_npz_with_object_arrays_is_refused(tmp_path):
  path = str(tmp_path / 'evil.npz')
  np.savez(path, **{'conv1.weight': np.array([{'a': 1}], dtype=object)})  # pickled inside
  with pytest.raises(weights.UnsafeCheckpointError, match='pickled'):
    weights.read_state_dict(path)


# --- .pth (torch) ----------------------------------------------------------------------------


class Payload:
  """Any non-tensor object: torch.load(weights_only=True) must refuse to rebuild it."""

  def __reduce__(self):
    return (os.getcwd, ())


def test_pth_with_arbitrary_object_is_refused(tmp_path):
  torch = pytest.importorskip('torch')
  path = str(tmp_path / 'evil.pth')
  torch.save({'conv1.weight': torch.zeros(2), 'extra': Payload()}, path)
  with pytest.raises(weights.UnsafeCheckpointError, match='arbitrary unpickling'):
    weights.read_state_dict(path)
  with open(str(tmp_path / 'plain.pth'), 'wb') as f:  # a bare pickle, not even torch's format
    pickle.dump({'conv1.weight': Payload()}, f, protocol=2)
  with pytest.raises(weights.WeightImportError):
    weights.read_state_dict(str(tmp_path / 'plain.pth'))


def test_pth_wrapped_and_data_parallel(tmp_path):
  torch = pytest.importorskip('torch')
  source = _variables(_rsepm())
  state = {f'module.{k}': torch.from_numpy(v)
           for k, v in weights.to_state_dict('rsepm', source).items()}
  path = str(tmp_path / 'wrapped.pth')
  torch.save({'state_dict': state, 'epoch': 3}, path)
  _assert_same(weights.apply_init(f'rsepm:{path}', _variables(_rsepm(), seed=4)), source)


def test_pth_without_torch_suggests_npz(tmp_path, monkeypatch):
  path = str(tmp_path / 'w.pth')
  with open(path, 'wb') as f:
    f.write(b'not read')
  monkeypatch.setitem(__import__('sys').modules, 'torch', None)  # import torch -> ImportError
  with pytest.raises(weights.WeightImportError, match='--to-npz'):
    weights.read_state_dict(path)


# --- conversion CLI --------------------------------------------------------------------------


def _tiny_config():
  config = default.get_config()
  config.model.update(stage_sizes=(1, 1, 1, 1), width=8, aspp_channels=16, decoder_channels=16,
                      aspp_rates=(1, 2, 3), low_level_channels=8)
  config.data.num_classes = C
  return config


def _cli_args(tmp_path):
  # The same model as _tiny_config, through --config.x=y overrides as launch.py takes them.
  return ['--config.model.stage_sizes=(1, 1, 1, 1)', '--config.model.width=8',
          '--config.model.aspp_channels=16', '--config.model.decoder_channels=16',
          '--config.model.aspp_rates=(1, 2, 3)', '--config.model.low_level_channels=8',
          f'--config.data.num_classes={C}']


@pytest.mark.parametrize('kind, head', [('rsepm', None), ('imagenet', None), ('deeplab', 'v2')])
def test_convert_cli_round_trip(kind, head, tmp_path):
  model = _deeplab(head) if kind == 'deeplab' else _rsepm()
  source = _variables(model, seed=5)
  src = _npz(tmp_path, weights.to_state_dict(kind, source))
  dst = str(tmp_path / 'converted')
  extra = [f'--config.model.segmenter_head={head}'] if head else []
  argv = ['convert', f'--kind={kind}', f'--src={src}', f'--dst={dst}'] + _cli_args(tmp_path)
  assert convert_weights.main(argv + extra) == 0
  assert sorted(os.listdir(dst)) == ['0', 'import.json']
  target = _variables(model, seed=6)
  loaded = convert_weights.load_converted(dst, target)
  direct = weights.apply_init(f'{kind}:{src}', target)
  _assert_same(loaded, direct)
  _assert_same(weights.apply_init(f'{kind}:{dst}', target), direct)
  assert convert_weights.main(argv + extra) == 1  # never overwrites
  if kind == 'rsepm':
    with pytest.raises(weights.WeightImportError, match="converted as 'rsepm'"):
      weights.apply_init(f'deeplab:{dst}', target)


def test_convert_other_class_count(tmp_path):
  source = _variables(_rsepm(num_classes=20))
  src = _npz(tmp_path, weights.to_state_dict('rsepm', source))
  dst = str(tmp_path / 'converted')
  with pytest.raises(weights.WeightImportError, match='class count'):
    convert_weights.convert('rsepm', src, dst, _tiny_config())
  report = convert_weights.convert('rsepm', src, dst, _tiny_config(), strict=False)
  assert report.skipped == ['classifier.weight', 'decoder.classifier.4.weight']
  target = _variables(_rsepm(), seed=7)
  loaded = weights.apply_init(f'rsepm:{dst}', target)
  np.testing.assert_array_equal(loaded['params']['classifier']['kernel'],
                                target['params']['classifier']['kernel'])
  _assert_same(loaded['params']['backbone'], source['params']['backbone'])


def test_to_npz(tmp_path, capsys):
  torch = pytest.importorskip('torch')
  state = {'conv1.weight': torch.randn(4, 3, 7, 7), 'bn1.num_batches_tracked': torch.tensor(7),
           'half': torch.randn(3).half()}
  torch.save(state, str(tmp_path / 'w.pth'))
  argv = ['convert', '--to-npz', f'--src={tmp_path / "w.pth"}', f'--dst={tmp_path / "w.npz"}']
  assert convert_weights.main(argv) == 0
  assert 'wrote 3 tensors' in capsys.readouterr().out
  with np.load(str(tmp_path / 'w.npz'), allow_pickle=False) as data:
    np.testing.assert_array_equal(data['conv1.weight'], state['conv1.weight'].numpy())
    assert data['bn1.num_batches_tracked'] == 7
    assert data['half'].dtype == np.float32


def test_cli_usage_errors(tmp_path, capsys):
  assert convert_weights.main(['convert', '--kind=rsepm']) == 2
  assert convert_weights.main(['convert', '--kind=bogus', '--src=a', '--dst=b']) == 2
  assert convert_weights.main(['convert', '--kind=rsepm', f'--src={tmp_path / "none.npz"}',
                               f'--dst={tmp_path / "out"}']) == 1
  assert 'none.npz' in capsys.readouterr().err


def test_build_deeplab_from_config():
  config = _tiny_config()
  config.model.segmenter_head = 'v2'
  model = models.build_deeplab(config.model, C)
  assert model.head == 'v2' and model.v2_rates == (6, 12, 18, 24)
  assert models.build_deeplab(config.model, C, head='v3plus').head == 'v3plus'
  legacy = ml_collections.ConfigDict({k: v for k, v in config.model.items()
                                      if k not in ('dilation_scheme', 'segmenter_head',
                                                   'v2_rates', 'init_strict')})
  # A config written before these fields existed gets their defaults when it is completed.
  legacy = config_lib.complete(legacy, config_lib.defaults().model)
  assert models.build_model(legacy, C).dilation_scheme == 'uniform'
  config.model.dilation_scheme = 'authors'
  assert models.build_model(config.model, C).dilation_scheme == 'authors'
