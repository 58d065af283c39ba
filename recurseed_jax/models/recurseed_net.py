"""The RecurSeed network (METHOD.md section 1) and a plain DeepLab segmenter for multi-stage.

Top-level parameter names: `backbone` (ResNet, see resnet.py), `classifier` (the CAM 1x1 conv),
`seg_head` (DeepLabV3PlusHead) in RecurSeedNet; `backbone`, `head` in DeepLabNet. They map one to
one onto the authors' RSEPM / DeepLabv3_Plus / DeepLabv2 (core/networks.py): `model.*` ->
backbone, `classifier` -> classifier, `aspp.*` and `decoder.*` -> seg_head / head (weights.py has
the full table). Their networks are these with dilation_scheme='authors', aspp_rates (6, 12, 18)
at output stride 16 and (12, 24, 36) at 8, low_level_channels 256 (RSEPM) or 48 (DeepLabv3+).
"""

from typing import Any, Dict, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from recurseed_jax.models.deeplab import DeepLabV2Head
from recurseed_jax.models.deeplab import DeepLabV3PlusHead
from recurseed_jax.models.resnet import ResNet


def _v3plus_head(net, name):
  """The DeepLabv3+ head with C + 1 outputs, configured from a network's fields."""
  return DeepLabV3PlusHead(
      net.num_classes + 1, net.aspp_channels, tuple(net.aspp_rates), net.low_level_channels,
      net.decoder_channels, net.aspp_dropout, tuple(net.decoder_dropout), net.dtype,
      net.bn_axis_name, name=name)


def _backbone(net):
  return ResNet(tuple(net.stage_sizes), net.width, net.output_stride, net.dtype,
                net.bn_axis_name, dilation_scheme=net.dilation_scheme, name='backbone')


class _ResNetDeepLab(nn.Module):
  """The fields both networks share (backbone and DeepLabv3+ head); see build_model."""
  num_classes: int
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  output_stride: int = 16
  aspp_channels: int = 256
  aspp_rates: Sequence[int] = (6, 12, 18)
  low_level_channels: int = 48
  decoder_channels: int = 256
  aspp_dropout: float = 0.5
  decoder_dropout: Sequence[float] = (0.5, 0.1)
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None
  dilation_scheme: str = 'uniform'


class RecurSeedNet(_ResNetDeepLab):
  """Shared ResNet backbone, a CAM classification head and a DeepLabv3+ segmentation head.

  `__call__(x, train=False)` maps images [B, H, W, 3] to a dict:
    features: the backbone dict {'stage2'..'stage5'} (compute dtype, not cast).
    cam: [B, H/os, W/os, C] float32, the classifier's map (the CAM, before any ReLU).
    logits: [B, C] float32, the spatial mean of `cam`.
    seg: [B, H/4, W/4, C + 1] float32, channel 0 = background.
  """

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> Dict[str, Any]:
    features = _backbone(self)(x, train)
    # PSA/IRN-style CAM classifier: bias-free 1x1 conv, xavier init.
    cam = nn.Conv(self.num_classes, (1, 1), use_bias=False, dtype=self.dtype,
                  kernel_init=nn.initializers.xavier_uniform(),
                  name='classifier')(features['stage5']).astype(jnp.float32)
    seg = _v3plus_head(self, 'seg_head')(features['stage5'], features['stage2'], train)
    return dict(features=features, cam=cam, logits=jnp.mean(cam, axis=(1, 2)),
                seg=seg.astype(jnp.float32))


class DeepLabNet(_ResNetDeepLab):
  """ResNet + one DeepLab head with C + 1 outputs, for multi-stage training on pseudo masks.

  `__call__(x, train=False)` returns dict(features, seg); seg is float32 at stride 4 for
  head='v3plus' and at `output_stride` for head='v2'.
  """
  stage_sizes: Sequence[int] = (3, 4, 23, 3)  # ResNet-101 by default
  head: str = 'v3plus'
  v2_rates: Sequence[int] = (6, 12, 18, 24)

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> Dict[str, Any]:
    features = _backbone(self)(x, train)
    if self.head == 'v3plus':
      seg = _v3plus_head(self, 'head')(features['stage5'], features['stage2'], train)
    elif self.head == 'v2':
      seg = DeepLabV2Head(self.num_classes + 1, tuple(self.v2_rates), self.dtype,
                          name='head')(features['stage5'], train)
    else:
      raise ValueError(f"head must be 'v3plus' or 'v2', got {self.head!r}")
    return dict(features=features, seg=seg.astype(jnp.float32))
