"""ResNet-50/101 backbone in torchvision's layout, dilated for output stride 16 or 8.

The parameter tree maps one to one onto torchvision's `resnet50` / `resnet101` state dict (without
`fc`), so ImageNet weights import by renaming and transposing conv kernels (OIHW -> HWIO):

| torchvision                          | here                                          |
|--------------------------------------|-----------------------------------------------|
| conv1.weight                         | params/conv1/kernel                           |
| bn1.weight, bn1.bias                 | params/bn1/scale, params/bn1/bias             |
| bn1.running_mean, bn1.running_var    | batch_stats/bn1/mean, batch_stats/bn1/var     |
| layer{S}.{B}.conv{K}.weight          | params/layer{S}_{B}/conv{K}/kernel            |
| layer{S}.{B}.bn{K}.{weight,bias}     | params/layer{S}_{B}/bn{K}/{scale,bias}        |
| layer{S}.{B}.bn{K}.running_{mean,var}| batch_stats/layer{S}_{B}/bn{K}/{mean,var}     |
| layer{S}.{B}.downsample.0.weight     | params/layer{S}_{B}/downsample_conv/kernel    |
| layer{S}.{B}.downsample.1.*          | params|batch_stats/layer{S}_{B}/downsample_bn/*|
| fc.*                                 | (not part of the backbone)                    |

(`num_batches_tracked` has no counterpart.) S is 1..4, B the block index, K 1..3.

Strides and dilations of layer1..layer4 per output stride:

| output_stride | strides      | dilations    |
|---------------|--------------|--------------|
| 32            | (1, 2, 2, 2) | (1, 1, 1, 1) |
| 16            | (1, 2, 2, 1) | (1, 1, 1, 2) |
| 8             | (1, 2, 1, 1) | (1, 1, 2, 4) |

`dilation_scheme` says which 3x3 convs get those dilations (the parameters are the same in all
three, so one checkpoint loads into any):
- 'uniform': every block of a stage uses the stage's dilation (DeepLab's usual choice).
- 'torchvision': as `replace_stride_with_dilation`: the first block of a dilated stage keeps the
  previous stage's dilation. `torchvision_dilation=True` is an older spelling of this.
- 'authors': as the RS+EPM authors' core/backbones/resnet (their released checkpoints): the first
  block of every stage uses dilation 1, and at output stride 16 the last stage has stride 1 but
  no dilation at all (dilations (1, 1, 1, 1)); output stride 8 uses (1, 1, 2, 4).

BatchNorm is norm.BatchNorm: PyTorch's eps 1e-5, momentum 0.1 (decay 0.9), and running variance
updated with the unbiased batch variance, as torch does.
"""

import functools
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from recurseed_jax.models.norm import BatchNorm

# torchvision: kaiming_normal_(mode='fan_out', nonlinearity='relu') on every conv.
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


DILATION_SCHEMES = ('uniform', 'torchvision', 'authors')


def stage_strides_and_dilations(
    output_stride: int, scheme: str = 'uniform') -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
  """Strides and dilations of layer1..layer4 for an output stride of 32, 16 or 8."""
  table = {
      32: ((1, 2, 2, 2), (1, 1, 1, 1)),
      16: ((1, 2, 2, 1), (1, 1, 1, 2)),
      8: ((1, 2, 1, 1), (1, 1, 2, 4)),
  }
  if output_stride not in table:
    raise ValueError(f'output_stride must be 32, 16 or 8, got {output_stride}')
  if scheme not in DILATION_SCHEMES:
    raise ValueError(f'dilation_scheme must be one of {DILATION_SCHEMES}, got {scheme!r}')
  strides, dilations = table[output_stride]
  if scheme == 'authors' and output_stride == 16:
    dilations = (1, 1, 1, 1)  # their build_resnet: last_stride=1 without dilation
  return strides, dilations


def block_dilations(num_blocks: int, dilation: int, previous: int, scheme: str) -> Tuple[int, ...]:
  """Dilation of each block's 3x3 conv in a stage of `num_blocks` blocks."""
  first = {'uniform': dilation, 'torchvision': previous, 'authors': 1}[scheme]
  return (first,) + (dilation,) * (num_blocks - 1)


def batch_norm(train: bool, dtype: Any, axis_name: Optional[str], name: str) -> BatchNorm:
  """BatchNorm with PyTorch's defaults (torch momentum 0.1 == decay 0.9 here)."""
  return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                   axis_name=axis_name, name=name)


class Bottleneck(nn.Module):
  """torchvision's Bottleneck (ResNet v1.5: the stride sits on the 3x3 conv)."""
  features: int
  stride: int = 1
  dilation: int = 1
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_init)
    norm = functools.partial(batch_norm, train, self.dtype, self.bn_axis_name)
    out_features = self.features * 4
    d = self.dilation

    y = conv(self.features, (1, 1), padding='VALID', name='conv1')(x)
    y = nn.relu(norm('bn1')(y))
    # Explicit padding = dilation reproduces PyTorch's output size for any input size.
    y = conv(self.features, (3, 3), strides=self.stride, padding=((d, d), (d, d)),
             kernel_dilation=d, name='conv2')(y)
    y = nn.relu(norm('bn2')(y))
    y = conv(out_features, (1, 1), padding='VALID', name='conv3')(y)
    y = norm('bn3')(y)

    residual = x
    if self.stride != 1 or x.shape[-1] != out_features:
      residual = conv(out_features, (1, 1), strides=self.stride, padding='VALID',
                      name='downsample_conv')(x)
      residual = norm('downsample_bn')(residual)
    return nn.relu(y + residual)


class ResNet(nn.Module):
  """Bottleneck ResNet without the classifier; returns the outputs of layer1..layer4.

  Attributes:
    stage_sizes: blocks per stage, (3, 4, 6, 3) for ResNet-50, (3, 4, 23, 3) for ResNet-101.
    width: stem channels; stage i has width * 2**i bottleneck channels, 4x that at its output.
    output_stride: 32, 16 or 8 (see the module docstring).
    dtype: compute dtype (parameters stay float32).
    bn_axis_name: pmap axis for cross-replica BatchNorm statistics, or None.
    dilation_scheme: 'uniform', 'torchvision' or 'authors' (see the module docstring).
    torchvision_dilation: True means dilation_scheme='torchvision' (older spelling).
  """
  stage_sizes: Sequence[int]
  width: int = 64
  output_stride: int = 16
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None
  dilation_scheme: str = 'uniform'
  torchvision_dilation: bool = False

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> Dict[str, jnp.ndarray]:
    """Maps [B, H, W, 3] images to {'stage2': stride 4, 'stage3': 8, 'stage4', 'stage5'}."""
    x = x.astype(self.dtype)
    x = nn.Conv(self.width, (7, 7), strides=2, padding=((3, 3), (3, 3)), use_bias=False,
                dtype=self.dtype, kernel_init=conv_init, name='conv1')(x)
    x = nn.relu(batch_norm(train, self.dtype, self.bn_axis_name, 'bn1')(x))
    # reduce_window pads with the init value (-inf), like PyTorch's MaxPool2d padding.
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    scheme = 'torchvision' if self.torchvision_dilation else self.dilation_scheme
    strides, dilations = stage_strides_and_dilations(self.output_stride, scheme)
    features = {}
    previous = 1
    for i, num_blocks in enumerate(self.stage_sizes):
      for b, dilation in enumerate(block_dilations(num_blocks, dilations[i], previous, scheme)):
        x = Bottleneck(self.width * 2**i, stride=strides[i] if b == 0 else 1, dilation=dilation,
                       dtype=self.dtype, bn_axis_name=self.bn_axis_name,
                       name=f'layer{i + 1}_{b}')(x, train)
      features[f'stage{i + 2}'] = x
      previous = dilations[i]
    return features
