"""BoundaryNet against a PyTorch twin of the authors' AffinityNet, through weights.py's import.

The twin (tests/torch_reference.py, TorchAffinityNet) has the authors' state_dict keys; it gets
random weights, calibrated BatchNorm statistics (randomize_ on its backbone) and random
GroupNorm affines, its state_dict is imported as kind 'affinity', and both networks must give
the same boundary logits. Small stage sizes and width keep it to seconds.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')

from recurseed_jax.models import boundary_net
from recurseed_jax.models import weights
import reference
import torch_reference as tr

pytestmark = pytest.mark.usefixtures('one_torch_thread')

LAYERS, WIDTH = (1, 2, 1, 1), 16


@functools.lru_cache(maxsize=None)
def _twin():
  net = tr.TorchAffinityNet(LAYERS, WIDTH)
  tr.randomize_(net.model, seed=3)  # backbone weights and calibrated BatchNorm statistics
  gen = torch.Generator().manual_seed(4)
  with torch.no_grad():
    for name, m in net.named_modules():
      if name.startswith('fc_edge') and isinstance(m, torch.nn.Conv2d):
        m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * m.weight[0].numel()**-0.5)
        if m.bias is not None:
          m.bias.copy_(torch.rand(m.bias.shape, generator=gen) - 0.5)
      elif isinstance(m, torch.nn.GroupNorm):
        m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
        m.bias.copy_(torch.rand(m.bias.shape, generator=gen) - 0.5)
  return net.eval()


def _model():
  return boundary_net.BoundaryNet(LAYERS, WIDTH)


@functools.lru_cache(maxsize=None)
def _variables():
  model = _model()
  like = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  like = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), like)
  state = dict(tr.state_dict_numpy(_twin()), path_indices_0=np.zeros((3, 2, 5), np.int64))
  variables, report = weights.import_state_dict('affinity', state, like)
  assert report.ignored and all(k.endswith('num_batches_tracked') or k == 'path_indices_0'
                                for k in report.ignored)
  return variables


def _close(ours, ref, name):
  ours, ref = np.asarray(ours), np.asarray(ref)
  assert ours.shape == ref.shape, f'{name}: {ours.shape} vs {ref.shape}'
  scale = float(np.abs(ref).max())
  assert scale > 0.1, f'{name}: degenerate reference (max |value| {scale})'
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * scale, err_msg=name)


# 64: a multiple of 16, where the authors' forward itself runs; 72 x 50: IRN's crop at work.
@pytest.mark.parametrize('size', [(64, 64), (72, 50)], ids=['64x64', '72x50'])
def test_logits_match_the_authors_layout(size):
  x = np.random.RandomState(sum(size)).randn(2, 3, *size).astype(np.float32)
  with torch.no_grad():
    ref = _twin()(torch.from_numpy(x))[:, 0].numpy()
  fn = jax.jit(_model().apply).lower(_variables(), x.transpose(0, 2, 3, 1)).compile(
      reference.FAST_COMPILE)
  ours = fn(_variables(), x.transpose(0, 2, 3, 1))
  assert ours.shape == (2, (size[0] - 1) // 4 + 1, (size[1] - 1) // 4 + 1)
  _close(ours, ref, f'logits {size}')


def test_predict_edge_matches_irn_inference():
  """Flip, zero pad, crop, sigmoid of the mean logit: IRN's EdgeDisplacement / get_edge."""
  x = np.random.RandomState(7).randn(1, 3, 45, 61).astype(np.float32)
  with torch.no_grad():
    ref = _twin().get_edge(torch.from_numpy(x), image_size=64).numpy()
  ours = boundary_net.predict_edge(_model(), _variables(), jnp.asarray(x.transpose(0, 2, 3, 1)),
                                   pad_to=64)
  assert ours.shape == (1, 12, 16)
  _close(ours, ref, 'edge probabilities')
  with pytest.raises(ValueError, match='pad_to'):
    boundary_net.predict_edge(_model(), _variables(), jnp.zeros((1, 70, 20, 3)), pad_to=64)


@pytest.mark.slow
def test_backbone_is_frozen():
  """No gradient reaches the backbone; every edge layer gets one; BatchNorm needs no update."""
  model, variables = _model(), _variables()
  x = jnp.asarray(np.random.RandomState(8).randn(1, 32, 32, 3), jnp.float32)

  def loss(params):
    return jnp.mean(jax.nn.sigmoid(model.apply(dict(variables, params=params), x, train=True)))

  grads = jax.jit(jax.grad(loss)).lower(variables['params']).compile(
      reference.FAST_COMPILE)(
      variables['params'])
  backbone = jax.tree.leaves(grads['backbone'])
  assert backbone and all(float(jnp.max(jnp.abs(g))) == 0.0 for g in backbone)
  edge = [grads[f'fc_edge{i}']['conv']['kernel'] for i in range(1, 6)] + [
      grads['fc_edge6']['kernel']]
  assert all(float(jnp.max(jnp.abs(g))) > 0 for g in edge)


def test_import_checks_the_network_and_the_keys():
  like = _variables()
  state = tr.state_dict_numpy(_twin())
  not_a_boundary_net = {'params': {'backbone': {}, 'classifier': {}, 'seg_head': {}}}
  with pytest.raises(weights.WeightImportError, match='BoundaryNet'):
    weights.import_state_dict('affinity', state, not_a_boundary_net)
  del state['fc_edge3.1.weight']
  with pytest.raises(weights.WeightImportError, match='fc_edge3.1.weight'):
    weights.import_state_dict('affinity', state, like)
  assert weights.torch_key('affinity', ('params', 'fc_edge2', 'gn', 'scale')) == 'fc_edge2.1.weight'
  # The backbone alone takes torchvision ImageNet weights (IRN freezes an ImageNet ResNet-50).
  backbone = {k[len('model.'):] for k in state if k.startswith('model.')
              and not k.endswith('num_batches_tracked')}
  assert set(weights.expected_keys('imagenet', like)) == backbone
  assert weights.torch_key('affinity', ('batch_stats', 'backbone', 'layer2_1', 'bn3', 'var')) == (
      'model.layer2.1.bn3.running_var')
