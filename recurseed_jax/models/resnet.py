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

By default every 3x3 conv of a dilated stage uses that stage's dilation. torchvision's
`replace_stride_with_dilation` instead gives the first block of a dilated stage the previous
stage's dilation; `torchvision_dilation=True` reproduces that exactly (same parameters either way).
"""

import functools
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

# torchvision: kaiming_normal_(mode='fan_out', nonlinearity='relu') on every conv.
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def stage_strides_and_dilations(
    output_stride: int) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
  """Strides and dilations of layer1..layer4 for an output stride of 32, 16 or 8."""
  table = {
      32: ((1, 2, 2, 2), (1, 1, 1, 1)),
      16: ((1, 2, 2, 1), (1, 1, 1, 2)),
      8: ((1, 2, 1, 1), (1, 1, 2, 4)),
  }
  if output_stride not in table:
    raise ValueError(f'output_stride must be 32, 16 or 8, got {output_stride}')
  return table[output_stride]


def batch_norm(train: bool, dtype: Any, axis_name: Optional[str], name: str) -> nn.BatchNorm:
  """BatchNorm with PyTorch's defaults (torch momentum 0.1 == flax momentum 0.9)."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
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
    torchvision_dilation: first block of a dilated stage uses the previous dilation.
  """
  stage_sizes: Sequence[int]
  width: int = 64
  output_stride: int = 16
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None
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

    strides, dilations = stage_strides_and_dilations(self.output_stride)
    features = {}
    previous_dilation = 1
    for i, num_blocks in enumerate(self.stage_sizes):
      for b in range(num_blocks):
        first = b == 0
        dilation = previous_dilation if (first and self.torchvision_dilation) else dilations[i]
        x = Bottleneck(self.width * 2**i, stride=strides[i] if first else 1, dilation=dilation,
                       dtype=self.dtype, bn_axis_name=self.bn_axis_name,
                       name=f'layer{i + 1}_{b}')(x, train)
      features[f'stage{i + 2}'] = x
      previous_dilation = dilations[i]
    return features
