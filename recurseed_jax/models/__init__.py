"""Networks of METHOD.md section 1, the parameter labelling the optimiser needs, weight import.

`apply_init(config.model.init, variables)` (weights.py) starts a network from torchvision
ImageNet weights or the RS+EPM authors' checkpoints.
"""

from typing import Any, Optional

import jax
import jax.numpy as jnp

from recurseed_jax.models.boundary_net import BoundaryNet
from recurseed_jax.models.deeplab import ASPP
from recurseed_jax.models.deeplab import DeepLabV2Head
from recurseed_jax.models.deeplab import DeepLabV3PlusHead
from recurseed_jax.models.recurseed_net import DeepLabNet
from recurseed_jax.models.recurseed_net import RecurSeedNet
from recurseed_jax.models.resnet import Bottleneck
from recurseed_jax.models.resnet import ResNet
from recurseed_jax.models.weights import apply_init

__all__ = [
    'ASPP', 'Bottleneck', 'BoundaryNet', 'DeepLabNet', 'DeepLabV2Head', 'DeepLabV3PlusHead',
    'RecurSeedNet', 'ResNet', 'apply_init', 'build_boundary', 'build_deeplab', 'build_model',
    'builder', 'decay_mask', 'param_groups',
    'COMPUTE_DTYPES', 'NETWORKS', 'SEGMENTER_HEADS',
]


# config.train.dtype -> the networks' compute dtype (parameters and losses stay float32).
COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
SEGMENTER_HEADS = ('v3plus', 'v2')  # config.model.segmenter_head
NETWORKS = ('recurseed', 'deeplab', 'boundary')  # config.model.network: RecurSeedNet, DeepLabNet,
#                                                 BoundaryNet


def build_model(model_config: Any, num_classes: int, dtype: Any = jnp.float32,
                bn_axis_name: Optional[str] = None) -> RecurSeedNet:
  """Builds RecurSeedNet from the `config.model` fields (configs/default.py)."""
  return RecurSeedNet(**_shared_fields(model_config, num_classes, dtype, bn_axis_name))


def _shared_fields(c: Any, num_classes: int, dtype: Any, bn_axis_name: Optional[str]) -> dict:
  """The constructor arguments both networks read from `config.model`."""
  return dict(
      num_classes=num_classes,
      stage_sizes=tuple(c.stage_sizes),
      width=c.width,
      output_stride=c.output_stride,
      aspp_channels=c.aspp_channels,
      aspp_rates=tuple(c.aspp_rates),
      low_level_channels=c.low_level_channels,
      decoder_channels=c.decoder_channels,
      aspp_dropout=c.aspp_dropout,
      decoder_dropout=tuple(c.decoder_dropout),
      dtype=dtype,
      bn_axis_name=bn_axis_name,
      dilation_scheme=c.dilation_scheme)


def build_deeplab(model_config: Any, num_classes: int, head: Optional[str] = None,
                  dtype: Any = jnp.float32, bn_axis_name: Optional[str] = None) -> DeepLabNet:
  """Builds the multi-stage DeepLabNet (C + 1 outputs) from the same `config.model` fields.

  `head` ('v3plus' or 'v2') defaults to `model.segmenter_head`; DeepLabv2 uses `model.v2_rates`.
  """
  c = model_config
  return DeepLabNet(head=head or c.segmenter_head, v2_rates=tuple(c.v2_rates),
                    **_shared_fields(c, num_classes, dtype, bn_axis_name))


def build_boundary(model_config: Any, num_classes: Optional[int] = None,
                   dtype: Any = jnp.float32, bn_axis_name: Optional[str] = None,
                   feature_size: int = 32) -> BoundaryNet:
  """Builds the random walk's BoundaryNet on the `config.model` backbone (stage sizes, width).

  num_classes and bn_axis_name are unused (one boundary logit; the backbone's BatchNorm is
  frozen): the signature is the other builders'.
  """
  del num_classes, bn_axis_name
  return BoundaryNet(stage_sizes=tuple(model_config.stage_sizes), width=model_config.width,
                     feature_size=feature_size, dtype=dtype,
                     dilation_scheme=model_config.dilation_scheme)


def builder(network: str):
  """The builder of a config.model.network name (NETWORKS)."""
  builders = dict(recurseed=build_model, deeplab=build_deeplab, boundary=build_boundary)
  if network not in builders:
    raise ValueError(f'config.model.network={network!r} is not one of: {", ".join(NETWORKS)}')
  return builders[network]


def _key_name(entry: Any) -> str:
  # DictKey (dicts, FrozenDict) has .key; GetAttrKey has .name.
  return str(getattr(entry, 'key', getattr(entry, 'name', entry)))


def param_groups(params: Any) -> Any:
  """Labels each leaf 'backbone' (under a `backbone` module) or 'head' (the rest).

  Works on the `params` collection or the whole variables dict; same tree structure out,
  suitable for optax.multi_transform (heads get the 10x learning rate).
  """
  def label(path, _):
    return 'backbone' if any(_key_name(p) == 'backbone' for p in path) else 'head'
  return jax.tree_util.tree_map_with_path(label, params)


def decay_mask(params: Any) -> Any:
  """True for conv / dense kernels, False for biases and BatchNorm scale / bias."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: _key_name(path[-1]) == 'kernel', params)
