"""DeepLab segmentation heads: ASPP, the DeepLabv3+ decoder and the DeepLabv2 head.

Parameter names (all convs bias-free except in DeepLabV2Head):

| module            | submodules                                                          |
|-------------------|---------------------------------------------------------------------|
| ASPP              | branch0 (1x1), branch1..3 (3x3 dilated), pool (image pooling 1x1),   |
|                   | project (1x1 fuse); each a ConvBNReLU with children conv, bn        |
| DeepLabV3PlusHead | aspp, reduce (low-level 1x1), fuse1, fuse2 (3x3), classifier (3x3); |
|                   | upsample (Resize of the ASPP output, no parameters)                 |
| DeepLabV2Head     | conv0..conv3 (3x3 dilated, with bias)                                |

They map one to one onto the RS+EPM authors' ASPP_For_DeepLabv3 / Decoder / ASPP_For_DeepLabv2
(core/layers.py; the table is in weights.py), whose channel orders (ASPP concat: 1x1, dilated,
pooling; decoder concat: upsampled ASPP, then low-level) these follow.
"""

import functools
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from recurseed_jax.models.resnet import batch_norm

# PyTorch DeepLab implementations use kaiming_normal_ (fan_in) on the head convs.
head_init = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


def resize_bilinear(x: jnp.ndarray, size: Tuple[int, int]) -> jnp.ndarray:
  """Bilinear resize of [B, H, W, C] to `size`; half-pixel centres (torch align_corners=False)."""
  if tuple(x.shape[1:3]) == tuple(size):
    return x
  return jax.image.resize(x, (x.shape[0], size[0], size[1], x.shape[-1]), 'bilinear',
                          antialias=False)


class Resize(nn.Module):
  """Bilinear resize to `size` as a module without parameters: padded-batch inference
  (recurseed_jax/infer.py) intercepts it to resize each image's valid cells only."""

  @nn.compact
  def __call__(self, x: jnp.ndarray, size: Tuple[int, int]) -> jnp.ndarray:
    return resize_bilinear(x, size)


class ConvBNReLU(nn.Module):
  """Bias-free conv (padding = dilation * (k // 2), PyTorch-style) -> BatchNorm -> ReLU."""
  features: int
  kernel_size: int = 1
  dilation: int = 1
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    p = self.dilation * (self.kernel_size // 2)
    x = nn.Conv(self.features, (self.kernel_size,) * 2, padding=((p, p), (p, p)),
                kernel_dilation=self.dilation, use_bias=False, dtype=self.dtype,
                kernel_init=head_init, name='conv')(x)
    return nn.relu(batch_norm(train, self.dtype, self.bn_axis_name, 'bn')(x))


class ASPP(nn.Module):
  """Atrous spatial pyramid pooling (DeepLabv3): 1x1, dilated 3x3s, image pooling; fused."""
  channels: int = 256
  rates: Sequence[int] = (6, 12, 18)
  dropout: float = 0.5
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    block = functools.partial(ConvBNReLU, self.channels, dtype=self.dtype,
                              bn_axis_name=self.bn_axis_name)
    branches = [block(1, 1, name='branch0')(x, train)]
    for i, rate in enumerate(self.rates):
      branches.append(block(3, rate, name=f'branch{i + 1}')(x, train))
    pooled = jnp.mean(x, axis=(1, 2), keepdims=True)
    pooled = block(1, 1, name='pool')(pooled, train)
    # Upsampling a 1x1 map bilinearly is a broadcast.
    branches.append(jnp.broadcast_to(pooled, x.shape[:3] + (self.channels,)))
    y = block(1, 1, name='project')(jnp.concatenate(branches, axis=-1), train)
    return nn.Dropout(self.dropout)(y, deterministic=not train)


class DeepLabV3PlusHead(nn.Module):
  """ASPP on the high-level features + decoder on the stride-4 features; output at stride 4."""
  num_outputs: int
  aspp_channels: int = 256
  aspp_rates: Sequence[int] = (6, 12, 18)
  low_level_channels: int = 48
  decoder_channels: int = 256
  aspp_dropout: float = 0.5
  decoder_dropout: Sequence[float] = (0.5, 0.1)
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, high: jnp.ndarray, low: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """Maps high [B, h, w, D], low [B, H, W, D'] to logits [B, H, W, num_outputs]."""
    y = ASPP(self.aspp_channels, tuple(self.aspp_rates), self.aspp_dropout, self.dtype,
             self.bn_axis_name, name='aspp')(high, train)
    low = ConvBNReLU(self.low_level_channels, 1, 1, self.dtype, self.bn_axis_name,
                     name='reduce')(low, train)
    y = Resize(name='upsample')(y, tuple(low.shape[1:3])).astype(low.dtype)
    y = jnp.concatenate([y, low], axis=-1)
    for i, rate in enumerate(self.decoder_dropout):
      y = ConvBNReLU(self.decoder_channels, 3, 1, self.dtype, self.bn_axis_name,
                     name=f'fuse{i + 1}')(y, train)
      y = nn.Dropout(rate)(y, deterministic=not train)
    return nn.Conv(self.num_outputs, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                   dtype=self.dtype, kernel_init=head_init, name='classifier')(y)


class DeepLabV2Head(nn.Module):
  """DeepLabv2 ASPP: dilated 3x3 convs with bias on the high features, summed."""
  num_outputs: int
  rates: Sequence[int] = (6, 12, 18, 24)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, high: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """Maps high [B, h, w, D] to logits [B, h, w, num_outputs]; `train` is unused (no BN)."""
    del train
    out = 0.
    for i, rate in enumerate(self.rates):
      # Original DeepLabv2 init: N(0, 0.01) weights, zero bias.
      out = out + nn.Conv(self.num_outputs, (3, 3), padding=((rate, rate), (rate, rate)),
                          kernel_dilation=rate, use_bias=True, dtype=self.dtype,
                          kernel_init=nn.initializers.normal(0.01), name=f'conv{i}')(high)
    return out
