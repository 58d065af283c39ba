"""The boundary network of the random walk: IRN's class-boundary branch on a frozen ResNet.

Reproduces the edge layers of the RS+EPM authors' `AffinityNet` (core/networks.py of
shjo-april/RecurSeed_and_EdgePredictMix, with_instance=False), which is IRN's boundary branch
(net/resnet50_irn.py of jiwoon-ahn/irn) with GroupNorm eps 1e-3:
  - backbone: their ResNet (`model.*`; dilation_scheme='authors' at output stride 16, i.e.
    last_stride=1 without dilation), every BatchNorm in inference mode (their FixedBatchNorm),
    no gradient into it (they detach the five outputs). The five outputs are C1 = the stem after
    the max-pool (stride 4, `width` channels) and layer1..layer4 (strides 4, 8, 16, 16);
  - fc_edge1..5: per output a 1x1 conv to `feature_size` (32) channels without bias, GroupNorm
    (4 groups, eps 1e-3), for C3 / C4 / C5 a bilinear x2 / x4 / x4 upsampling (half-pixel,
    torch's align_corners=False), then ReLU (the upsampling comes before the ReLU, as theirs);
  - fc_edge6: a 1x1 conv with bias from the 5 * 32 concatenated channels to one logit.
Output: boundary logits at stride 4 (sigmoid -> boundary probability).

One difference, for sizes the authors' code cannot take: their forward concatenates the five
maps as they are, which works only where the upsampled maps have the stride-4 size (inputs that
are multiples of 16, such as their 512 x 512 crops). IRN's own forward crops the upsampled maps
to the stride-4 size ([:h, :w]); this does the same, which changes nothing where theirs works.

Parameters map onto the authors' state_dict through weights.py (kind 'affinity'):
backbone/* <-> model.*, fc_edge{i}/conv <-> fc_edge{i}.0, fc_edge{i}/gn <-> fc_edge{i}.1,
fc_edge6 <-> fc_edge6.
"""

import functools
from typing import Any, Dict, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from recurseed_jax.models.deeplab import resize_bilinear
from recurseed_jax.models.resnet import Bottleneck
from recurseed_jax.models.resnet import batch_norm
from recurseed_jax.models.resnet import block_dilations
from recurseed_jax.models.resnet import conv_init
from recurseed_jax.models.resnet import stage_strides_and_dilations

OUTPUT_STRIDE = 16  # the authors' AffinityNet backbone (last_stride=1)
UPSAMPLE = (1, 1, 2, 4, 4)  # C1..C5 strides (4, 4, 8, 16, 16) -> stride 4
# PyTorch's default conv init (kaiming_uniform, a=sqrt(5)); the authors keep it for these layers.
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


class FrozenResNet(nn.Module):
  """resnet.ResNet's layers and names, BatchNorm always in inference mode, five outputs.

  Returns {'stage1': the stem after the max-pool, 'stage2'..'stage5': layer1..layer4}. (The
  ResNet of resnet.py returns only layer1..layer4; this module shares its blocks and names, so
  its variables are a ResNet's.)
  """
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  dtype: Any = jnp.float32
  dilation_scheme: str = 'authors'

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> Dict[str, jnp.ndarray]:
    x = x.astype(self.dtype)
    x = nn.Conv(self.width, (7, 7), strides=2, padding=((3, 3), (3, 3)), use_bias=False,
                dtype=self.dtype, kernel_init=conv_init, name='conv1')(x)
    x = nn.relu(batch_norm(False, self.dtype, None, 'bn1')(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    features = {'stage1': x}
    strides, dilations = stage_strides_and_dilations(OUTPUT_STRIDE, self.dilation_scheme)
    previous = 1
    for i, num_blocks in enumerate(self.stage_sizes):
      plan = block_dilations(num_blocks, dilations[i], previous, self.dilation_scheme)
      for b, dilation in enumerate(plan):
        x = Bottleneck(self.width * 2**i, stride=strides[i] if b == 0 else 1, dilation=dilation,
                       dtype=self.dtype, name=f'layer{i + 1}_{b}')(x, False)
      features[f'stage{i + 2}'] = x
      previous = dilations[i]
    return features


class EdgeBranch(nn.Module):
  """1x1 conv (no bias) -> GroupNorm -> bilinear x`scale` -> ReLU, cropped to `size`."""
  features: int
  scale: int
  size: Tuple[int, int]
  groups: int = 4
  epsilon: float = 1e-3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = nn.Conv(self.features, (1, 1), use_bias=False, dtype=self.dtype,
                kernel_init=torch_default_init, name='conv')(x)
    x = nn.GroupNorm(num_groups=self.groups, epsilon=self.epsilon, dtype=self.dtype,
                     use_fast_variance=False, name='gn')(x)
    if self.scale != 1:
      x = resize_bilinear(x, (x.shape[1] * self.scale, x.shape[2] * self.scale))
    return nn.relu(x[:, :self.size[0], :self.size[1]])


class BoundaryNet(nn.Module):
  """Frozen ResNet + IRN's boundary branch (see the module docstring).

  Attributes:
    stage_sizes: blocks per stage, (3, 4, 6, 3) for ResNet-50.
    width: stem channels (64; smaller for tests).
    feature_size: channels of each edge branch (32).
    groups: GroupNorm groups (4); must divide feature_size.
    gn_epsilon: GroupNorm eps (the authors' 1e-3; IRN's torch default is 1e-5).
    dtype: compute dtype; the logits are float32.
    dilation_scheme: the backbone's (resnet.py); 'authors' is theirs.

  `__call__(x, train=False)` maps normalised images [B, H, W, 3] to boundary logits
  [B, ceil(H / 4), ceil(W / 4)] float32. `train` changes nothing (the backbone is frozen and
  GroupNorm has no state); it is accepted so that call sites can treat every network alike.
  """
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  feature_size: int = 32
  groups: int = 4
  gn_epsilon: float = 1e-3
  dtype: Any = jnp.float32
  dilation_scheme: str = 'authors'

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    del train
    if self.feature_size % self.groups:
      raise ValueError(f'feature_size {self.feature_size} is not a multiple of groups '
                       f'{self.groups}')
    if len(self.stage_sizes) != 4:
      raise ValueError(f'stage_sizes must give 4 stages, got {tuple(self.stage_sizes)}')
    stages = FrozenResNet(tuple(self.stage_sizes), self.width, self.dtype, self.dilation_scheme,
                          name='backbone')(x)
    size = stages['stage2'].shape[1:3]
    edges = []
    for i, scale in enumerate(UPSAMPLE):
      feature = jax.lax.stop_gradient(stages[f'stage{i + 1}'])
      edges.append(EdgeBranch(self.feature_size, scale, size, self.groups, self.gn_epsilon,
                              self.dtype, name=f'fc_edge{i + 1}')(feature))
    logits = nn.Conv(1, (1, 1), use_bias=True, dtype=self.dtype, kernel_init=torch_default_init,
                     bias_init=_torch_default_bias(5 * self.feature_size),
                     name='fc_edge6')(jnp.concatenate(edges, axis=-1))
    return logits[..., 0].astype(jnp.float32)


def _torch_default_bias(fan_in):
  """PyTorch's default conv bias init: uniform(-1 / sqrt(fan_in), 1 / sqrt(fan_in))."""
  bound = fan_in ** -0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _pad_size(pad_to: Union[int, Sequence[int]]) -> Tuple[int, int]:
  size = (pad_to, pad_to) if isinstance(pad_to, int) else tuple(pad_to)
  if len(size) != 2 or min(size) < 1:
    raise ValueError(f'pad_to must be a size or an (H, W) pair, got {pad_to!r}')
  return int(size[0]), int(size[1])


@functools.partial(jax.jit, static_argnames=('model', 'pad_to'))
def predict_edge(model: BoundaryNet, variables: Any, images: jnp.ndarray,
                 pad_to: Union[int, Tuple[int, int]] = 512) -> jnp.ndarray:
  """Boundary probabilities of images, as IRN's EdgeDisplacement / the authors' get_edge.

  Each image and its horizontal flip are zero-padded at the bottom and right to `pad_to`
  (IRN's crop size, 512), the logits are cropped to ceil(H / 4) x ceil(W / 4), the flipped
  one flipped back, and sigmoid(logits / 2 + flipped logits / 2) is returned.

  Args:
    model: a BoundaryNet.
    variables: its variables.
    images: [B, H, W, 3] normalised images of one size (H, W <= pad_to).
    pad_to: the padded size (an int for a square, or (H, W)).

  Returns:
    [B, ceil(H / 4), ceil(W / 4)] float32 boundary probabilities.
  """
  b, h, w, _ = images.shape
  ph, pw = _pad_size(pad_to)
  if h > ph or w > pw:
    raise ValueError(f'images of size {(h, w)} do not fit pad_to {(ph, pw)}')
  both = jnp.concatenate([images, images[:, :, ::-1]], axis=0)
  both = jnp.pad(both, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)))
  logits = model.apply(variables, both)[:, :(h - 1) // 4 + 1, :(w - 1) // 4 + 1]
  return jax.nn.sigmoid(logits[:b] / 2 + logits[b:, :, ::-1] / 2)
