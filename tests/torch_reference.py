"""PyTorch reference networks whose state_dict keys are torchvision's and the RS+EPM authors'.

The import code (recurseed_jax/models/weights.py) is proven by parity against these modules:
random weights here, imported into our Flax networks, same outputs. They are written from the
published layouts, not copied:
- `TorchResNet`: torchvision's resnet50 / resnet101 without `fc` (keys conv1.weight, bn1.*,
  layer1.0.conv1.weight, layer1.0.downsample.0.weight, ...).
- `TorchRecurSeedNet`: the authors' RSEPM (core/networks.py): keys model.* (their ResNet),
  classifier.weight (1x1, no bias), aspp.aspp1..4 / aspp.global_avg_pool.1 / aspp.block.0
  (conv + bn each), decoder.low_block, decoder.classifier.{0,2} (conv + bn), decoder.classifier.4
  (3x3, no bias).
- `TorchDeepLabV3Plus`, `TorchDeepLabV2`: the authors' DeepLabv3_Plus / DeepLabv2 (model.*,
  aspp.*, decoder.* / aspp.aspp1..4 with bias).

Outputs mirror ours, in NCHW: `features` {'stage2'..'stage5'} (layer1..layer4), and `cam`
[B, C, h, w], `logits` [B, C] (spatial mean of the CAM), `seg` [B, C + 1, H/4, W/4] (stride 4
for DeepLabv3+, output stride for v2; never resized to the input). `cam`, `logits` and `seg` are
float32 even under torch.autocast, like ours; features keep the compute dtype.

Importable without pytest (bench/train_step.py uses TorchRecurSeedNet for a PyTorch-eager
training-step benchmark); works in float32 and under torch.autocast, in train and eval mode.
`randomize_` gives a module random weights and realistic BatchNorm statistics for parity tests.
"""

from typing import Dict, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

DILATION_SCHEMES = ('uniform', 'torchvision', 'authors')


def _stage_plan(layers, output_stride, scheme):
  """(stride, [dilation per block]) for layer1..layer4, as each code base computes it."""
  if scheme not in DILATION_SCHEMES:
    raise ValueError(f'dilation_scheme must be one of {DILATION_SCHEMES}, got {scheme!r}')
  dilate = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}
  if output_stride not in dilate:
    raise ValueError(f'output_stride must be 32, 16 or 8, got {output_stride}')
  plan = [(1, [1] * layers[0])]
  if scheme == 'authors':
    # core/backbones/resnet: strides (2, 2, 2|1, last_stride=1), dilations (1,1,1,1) at OS16 and
    # (1,1,2,4) at OS8, and every first block at dilation 1.
    strides = {32: (2, 2, 2), 16: (2, 2, 1), 8: (2, 1, 1)}[output_stride]
    dilations = {32: (1, 1, 1), 16: (1, 1, 1), 8: (1, 2, 4)}[output_stride]
    for n, s, d in zip(layers[1:], strides, dilations):
      plan.append((s, [1] + [d] * (n - 1)))
    return plan
  current = 1
  for n, replace in zip(layers[1:], dilate[output_stride]):
    previous = current
    stride = 2
    if replace:  # torchvision's replace_stride_with_dilation
      current, stride = current * 2, 1
    first = previous if scheme == 'torchvision' else current
    plan.append((stride, [first] + [current] * (n - 1)))
  return plan


class Bottleneck(nn.Module):
  """torchvision's Bottleneck (stride on the 3x3 conv)."""
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, dilation=1):
    super().__init__()
    out = planes * self.expansion
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation,
                           dilation=dilation, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(out)
    self.downsample = None
    if stride != 1 or inplanes != out:
      self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False),
                                      nn.BatchNorm2d(out))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class TorchResNet(nn.Module):
  """torchvision's ResNet-50/101 body (no avgpool / fc); forward -> {'stage2'..'stage5'}."""

  def __init__(self, layers: Sequence[int] = (3, 4, 6, 3), output_stride: int = 16,
               dilation_scheme: str = 'torchvision', width: int = 64):
    super().__init__()
    self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
    inplanes = width
    for i, (stride, dilations) in enumerate(_stage_plan(layers, output_stride, dilation_scheme)):
      planes = width * 2**i
      blocks = []
      for b, d in enumerate(dilations):
        blocks.append(Bottleneck(inplanes, planes, stride if b == 0 else 1, d))
        inplanes = planes * Bottleneck.expansion
      setattr(self, f'layer{i + 1}', nn.Sequential(*blocks))
    self.out_channels = inplanes

  def forward(self, x) -> Dict[str, torch.Tensor]:
    x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
    features = {}
    for i in range(4):
      x = getattr(self, f'layer{i + 1}')(x)
      features[f'stage{i + 2}'] = x
    return features


class ConvBlock(nn.Module):
  """The authors' ConvBlock: conv (no bias) -> BatchNorm -> ReLU; keys conv.*, bn.*."""

  def __init__(self, inplanes, planes, kernel_size, dilation=1):
    super().__init__()
    pad = dilation * (kernel_size // 2)
    self.conv = nn.Conv2d(inplanes, planes, kernel_size, padding=pad, dilation=dilation,
                          bias=False)
    self.bn = nn.BatchNorm2d(planes)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


class ASPPv3(nn.Module):
  """The authors' ASPP_For_DeepLabv3: aspp1 (1x1), aspp2..4 (3x3), global_avg_pool, block."""

  def __init__(self, inplanes, planes, rates, dropout=0.5):
    super().__init__()
    self.aspp1 = ConvBlock(inplanes, planes, 1)
    for i, rate in enumerate(rates):
      setattr(self, f'aspp{i + 2}', ConvBlock(inplanes, planes, 3, rate))
    self.num_branches = 1 + len(rates)
    self.global_avg_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBlock(inplanes, planes, 1))
    self.block = nn.Sequential(ConvBlock(planes * (self.num_branches + 1), planes, 1),
                               nn.Dropout(dropout))

  def forward(self, x):
    outs = [getattr(self, f'aspp{i + 1}')(x) for i in range(self.num_branches)]
    pooled = self.global_avg_pool(x)
    outs.append(F.interpolate(pooled, size=x.shape[2:], mode='bilinear', align_corners=False))
    return self.block(torch.cat(outs, dim=1))


class Decoder(nn.Module):
  """The authors' Decoder: low_block (1x1) on stride-4 features; classifier.{0,2,4}."""

  def __init__(self, inplanes, planes, num_outputs, low_channels, dropout=(0.5, 0.1)):
    super().__init__()
    self.low_block = ConvBlock(inplanes, low_channels, 1)
    self.classifier = nn.Sequential(
        ConvBlock(planes + low_channels, planes, 3), nn.Dropout(dropout[0]),
        ConvBlock(planes, planes, 3), nn.Dropout(dropout[1]),
        nn.Conv2d(planes, num_outputs, 3, padding=1, bias=False))

  def forward(self, x, low):
    low = self.low_block(low)
    x = F.interpolate(x, size=low.shape[2:], mode='bilinear', align_corners=False)
    return self.classifier(torch.cat([x, low], dim=1))


class ASPPv2(nn.Module):
  """The authors' ASPP_For_DeepLabv2: aspp1..4, dilated 3x3 convs with bias, summed."""

  def __init__(self, inplanes, num_outputs, rates=(6, 12, 18, 24)):
    super().__init__()
    self.num_branches = len(rates)
    for i, rate in enumerate(rates):
      setattr(self, f'aspp{i + 1}', nn.Conv2d(inplanes, num_outputs, 3, padding=rate,
                                              dilation=rate, bias=True))

  def forward(self, x):
    return sum(getattr(self, f'aspp{i + 1}')(x) for i in range(self.num_branches))


def _default_rates(output_stride):
  return (12, 24, 36) if output_stride == 8 else (6, 12, 18)


class TorchRecurSeedNet(nn.Module):
  """The authors' RSEPM network: ResNet `model`, CAM `classifier`, DeepLabv3+ `aspp` + `decoder`.

  Args:
    num_classes: foreground classes C (the decoder has C + 1 outputs, 0 = background).
    layers: blocks per stage, (3, 4, 6, 3) ResNet-50 or (3, 4, 23, 3) ResNet-101.
    output_stride: 16 or 8 (32 also works).
    feature_size: ASPP and decoder channels (256).
    low_channels: decoder's stride-4 reduction (256 in RSEPM, 48 in plain DeepLabv3+).
    aspp_rates: dilated ASPP branches; default (6, 12, 18) at OS16, (12, 24, 36) at OS8.
    dilation_scheme: 'authors' (their ResNet), 'torchvision' or 'uniform' (see resnet.py).
    width: stem channels (64; smaller for quick tests and benchmarks).
    aspp_dropout, decoder_dropout: dropout rates (0.5 and (0.5, 0.1)).
  """

  def __init__(self, num_classes: int = 20, layers: Sequence[int] = (3, 4, 6, 3),
               output_stride: int = 16, feature_size: int = 256, low_channels: int = 256,
               aspp_rates: Optional[Sequence[int]] = None, dilation_scheme: str = 'authors',
               width: int = 64, aspp_dropout: float = 0.5,
               decoder_dropout: Sequence[float] = (0.5, 0.1)):
    super().__init__()
    self.model = TorchResNet(layers, output_stride, dilation_scheme, width)
    top, low = self.model.out_channels, width * 4
    self.classifier = nn.Conv2d(top, num_classes, 1, bias=False)
    self.aspp = ASPPv3(top, feature_size, aspp_rates or _default_rates(output_stride),
                       aspp_dropout)
    self.decoder = Decoder(low, feature_size, num_classes + 1, low_channels, decoder_dropout)

  def forward(self, x) -> Dict[str, object]:
    features = self.model(x)
    cam = self.classifier(features['stage5'])
    seg = self.decoder(self.aspp(features['stage5']), features['stage2'])
    cam = cam.float()
    return dict(features=features, cam=cam, logits=cam.mean(dim=(2, 3)), seg=seg.float())


class TorchDeepLabV3Plus(nn.Module):
  """The authors' DeepLabv3_Plus (built there with C + 1 classes): `model`, `aspp`, `decoder`."""

  def __init__(self, num_classes: int = 20, layers: Sequence[int] = (3, 4, 23, 3),
               output_stride: int = 16, feature_size: int = 256, low_channels: int = 48,
               aspp_rates: Optional[Sequence[int]] = None, dilation_scheme: str = 'authors',
               width: int = 64):
    super().__init__()
    self.model = TorchResNet(layers, output_stride, dilation_scheme, width)
    self.aspp = ASPPv3(self.model.out_channels, feature_size,
                       aspp_rates or _default_rates(output_stride))
    self.decoder = Decoder(width * 4, feature_size, num_classes + 1, low_channels)

  def forward(self, x) -> Dict[str, object]:
    features = self.model(x)
    seg = self.decoder(self.aspp(features['stage5']), features['stage2'])
    return dict(features=features, seg=seg.float())


class TorchDeepLabV2(nn.Module):
  """The authors' DeepLabv2 (built there with C + 1 classes): `model`, `aspp` (4 convs)."""

  def __init__(self, num_classes: int = 20, layers: Sequence[int] = (3, 4, 23, 3),
               output_stride: int = 8, rates: Sequence[int] = (6, 12, 18, 24),
               dilation_scheme: str = 'authors', width: int = 64):
    super().__init__()
    self.model = TorchResNet(layers, output_stride, dilation_scheme, width)
    self.aspp = ASPPv2(self.model.out_channels, num_classes + 1, rates)

  def forward(self, x) -> Dict[str, object]:
    features = self.model(x)
    return dict(features=features, seg=self.aspp(features['stage5']).float())


def _bn_after(conv_name):
  """The name of the BatchNorm that follows a conv in these layouts (conv1 -> bn1, ...)."""
  head, _, last = conv_name.rpartition('.')
  prefix = head + '.' if head else ''
  if last.startswith('conv'):
    return prefix + 'bn' + last[len('conv'):]
  if conv_name.endswith('downsample.0'):
    return prefix + '1'
  return None


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0, calibration_batch: int = 2,
               calibration_size: int = 64) -> nn.Module:
  """Random weights and BatchNorm statistics of the right scale, in place; leaves eval mode.

  Conv weights are He-normal (fan in; smaller for the predicting convs), conv biases and BN
  affines random; running statistics
  are the batch statistics of one random calibration batch (so activations stay O(1) through
  a random ResNet-101), then jittered so that none is the identity.
  """
  gen = torch.Generator().manual_seed(seed)

  def rand(shape, low, high):
    return torch.rand(shape, generator=gen) * (high - low) + low

  bn_names = {n for n, m in module.named_modules() if isinstance(m, nn.BatchNorm2d)}
  for name, m in module.named_modules():
    if isinstance(m, nn.Conv2d):
      fan_in = m.weight[0].numel()
      # Layers that predict (no BatchNorm after them) get logits of a trained head's O(1-10).
      gain = 2.0 if _bn_after(name) in bn_names else 0.25
      m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (gain / fan_in)**0.5)
      if m.bias is not None:
        m.bias.copy_(rand(m.bias.shape, -0.1, 0.1))
    elif isinstance(m, nn.BatchNorm2d):
      # Small last-BN scales in residual branches, as trained ResNets have: with scales near 1
      # a random ResNet-101 amplifies fp32 rounding ~100x over its 33 blocks (both torch and
      # ours then sit ~1e-3 from float64); with these both stay within ~3e-5 of it.
      low, high = (0.05, 0.2) if name.endswith('bn3') else (0.5, 1.5)
      m.weight.copy_(rand(m.weight.shape, low, high))
      m.bias.copy_(rand(m.bias.shape, -0.2, 0.2))
  bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
  momenta = [m.momentum for m in bns]
  for m in bns:
    m.reset_running_stats()
    m.momentum = None  # cumulative average: one batch -> exactly its statistics
  module.train()
  for m in module.modules():
    if isinstance(m, nn.Dropout):
      m.eval()  # statistics of the eval-mode activations
  x = torch.randn((calibration_batch, 3, calibration_size, calibration_size), generator=gen)
  module(x)
  for m, momentum in zip(bns, momenta):
    m.momentum = momentum
    m.running_mean.add_(rand(m.running_mean.shape, -0.05, 0.05))
    m.running_var.mul_(rand(m.running_var.shape, 0.8, 1.2))
    m.num_batches_tracked.zero_()
  return module.eval()


def state_dict_numpy(module: nn.Module) -> Dict[str, np.ndarray]:
  """The module's state_dict as numpy arrays (what an .npz of the checkpoint holds)."""
  return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


class TorchAffinityNet(nn.Module):
  """The authors' AffinityNet edge layers (core/networks.py, with_instance=False): keys model.*
  (their ResNet, BatchNorm always in eval mode as their FixedBatchNorm), fc_edge1..5 (1x1 conv
  without bias `.0`, GroupNorm(4, C, eps=1e-3) `.1`, for 3..5 an Upsample x2 / x4 / x4 before
  the ReLU), fc_edge6 (1x1 with bias). Their backbone outputs are the stem after the max-pool
  and layer1..layer4, each detached.

  Their forward concatenates the five maps as they are, which needs input sizes where they
  line up (multiples of 16); this one crops the upsampled maps to the stride-4 size first, as
  IRN's forward does, a no-op for those sizes. `forward` returns the logits [B, 1, h, w];
  `get_edge` is IRN's EdgeDisplacement inference (flip, zero pad to `image_size`, crop,
  sigmoid of the mean logit) for a batch.
  """

  def __init__(self, layers: Sequence[int] = (3, 4, 6, 3), width: int = 64,
               feature_size: int = 32, dilation_scheme: str = 'authors'):
    super().__init__()
    self.model = TorchResNet(layers, 16, dilation_scheme, width)
    in_channels = [width, width * 4, width * 8, width * 16, width * 32]
    for i, (channels, scale) in enumerate(zip(in_channels, (1, 1, 2, 4, 4))):
      parts = [nn.Conv2d(channels, feature_size, 1, bias=False),
               nn.GroupNorm(4, feature_size, eps=1e-3)]
      if scale > 1:
        parts.append(nn.Upsample(scale_factor=scale, mode='bilinear', align_corners=False))
      parts.append(nn.ReLU(inplace=True))
      setattr(self, f'fc_edge{i + 1}', nn.Sequential(*parts))
    self.fc_edge6 = nn.Conv2d(feature_size * 5, 1, 1, bias=True)

  def stages(self, x):
    """The five detached backbone outputs, BatchNorm in eval mode whatever the module's mode."""
    m = self.model
    was_training = m.training
    m.eval()
    x1 = m.maxpool(F.relu(m.bn1(m.conv1(x))))
    xs = [x1]
    for i in range(4):
      xs.append(getattr(m, f'layer{i + 1}')(xs[-1]))
    m.train(was_training)
    return [t.detach() for t in xs]

  def forward(self, x):
    xs = self.stages(x)
    edges = [getattr(self, f'fc_edge{i + 1}')(t) for i, t in enumerate(xs)]
    h, w = edges[1].shape[2:]
    edges = [e[..., :h, :w] for e in edges]
    return self.fc_edge6(torch.cat(edges, dim=1))

  @torch.no_grad()
  def get_edge(self, x, image_size=512, stride=4):
    """[B, 3, H, W] -> [B, ceil(H / 4), ceil(W / 4)] boundary probabilities."""
    b = x.shape[0]
    both = torch.cat([x, x.flip(-1)], dim=0)
    feat = (x.shape[2] - 1) // stride + 1, (x.shape[3] - 1) // stride + 1
    both = F.pad(both, [0, image_size - x.shape[3], 0, image_size - x.shape[2]])
    out = self.forward(both)[:, 0, :feat[0], :feat[1]]
    return torch.sigmoid(out[:b] / 2 + out[b:].flip(-1) / 2)
