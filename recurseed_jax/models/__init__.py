"""Networks of METHOD.md section 1, plus the parameter labelling the optimiser needs."""

from typing import Any, Optional

import jax
import jax.numpy as jnp

from recurseed_jax.models.deeplab import ASPP
from recurseed_jax.models.deeplab import DeepLabV2Head
from recurseed_jax.models.deeplab import DeepLabV3PlusHead
from recurseed_jax.models.recurseed_net import DeepLabNet
from recurseed_jax.models.recurseed_net import RecurSeedNet
from recurseed_jax.models.resnet import Bottleneck
from recurseed_jax.models.resnet import ResNet

__all__ = [
    'ASPP', 'Bottleneck', 'DeepLabNet', 'DeepLabV2Head', 'DeepLabV3PlusHead', 'RecurSeedNet',
    'ResNet', 'build_model', 'decay_mask', 'param_groups',
]


def build_model(model_config: Any, num_classes: int, dtype: Any = jnp.float32,
                bn_axis_name: Optional[str] = None) -> RecurSeedNet:
  """Builds RecurSeedNet from the `config.model` fields (configs/default.py)."""
  c = model_config
  return RecurSeedNet(
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
      bn_axis_name=bn_axis_name)


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
