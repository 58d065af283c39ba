"""Multi-scale + flip inference over padded bucket shapes (METHOD.md section 5).

Shapes are static so that nothing compiles per image: each image is padded bottom/right to the
smallest bucket (config.infer.buckets) that holds it, batches have a fixed size per bucket (the
last one padded), and each part of the step compiles once per bucket. The passes (scales x
orientations) run one after another, each adding into running sums at the bucket's size that it
takes donated, so one pass's activations are alive at a time, not all of them (Predictor; the
one-function form stays as `unrolled=True`). Each image's valid size travels with the batch;
padding never leaks into its result:

- Multi-scale resize: each image's valid rectangle (h, w) is resized on its own (per-image
  bilinear weights, half-pixel centres, edges clamped, exactly `jax.image.resize` of the image
  alone) to (floor(h * s), floor(w * s)), the authors' int(h * scale), on a canvas of
  ceil(bucket * s) rounded up to `align`; the flip mirrors the valid columns only.
- The network: every conv sees zeros past the valid rectangle at its own resolution (what its zero
  padding would show it), so the backbone, the CAM and the ASPP branches match the image run
  alone; the ASPP image-pooling branch averages over the valid cells only; the decoder resizes
  each image's ceil(h_s / os) valid ASPP cells onto its ceil(h_s / 4) valid low-level cells, as
  the network does on the unpadded image; class logits are the mean CAM over valid cells.
- Outputs are resized from their valid cells back to each image's size and are zero past it.

So a padded image gives what the same image gives alone, to float precision (tests/test_infer).
The network may compute in bfloat16 (config.infer.dtype, step_from_config); its parameters, the
softmax, every resize (the decoder's too) and the seeds stay float32.

The segmentation head's output reaches the image one of three ways (`interpolation`):
- 'nearest': the authors' RS+EPM seeds (infer_rsepm.py: same=True, interpolation='nearest'):
  logits resized by nearest to the pass's input, softmax, resized by nearest to the image; torch's
  nearest reads source index floor(i * n_in / n_out), no half-pixel offset. Softmax commutes
  with a gather, so this runs as one composite gather of the softmax at the head's resolution.
- 'bilinear': the authors' DeepLab predictions (infer_seg.py): the same with bilinear resizes
  (half-pixel); the softmax runs at the pass's input size.
- 'probs_bilinear': softmax at the head's resolution, one bilinear resize to the image (cheapest).

Host side: `run_split` decodes and pads the next batch on a background thread while the device
runs the current one, and shards each batch over the devices when given a sharding.
"""

import collections
import concurrent.futures
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from recurseed_jax import io_utils
from recurseed_jax import models
from recurseed_jax import parallel
from recurseed_jax.models import deeplab
from recurseed_jax.models import resnet

_HIGHEST = jax.lax.Precision.HIGHEST


# --- per-pixel products ------------------------------------------------------------------------
INTERPOLATIONS = ('nearest', 'bilinear', 'probs_bilinear')
HEADS = ('seg', 'cam')  # the network outputs a Predictor sums
SEED_DTYPES = ('float16', 'uint8')


def normalized_scores(fg, keep, eps=1e-5):
  """Foreground scores of kept classes, each divided by its spatial max. fg [B,H,W,C]."""
  fg = jnp.maximum(fg, 0) * keep[:, None, None, :]
  return fg / (jnp.max(fg, axis=(1, 2), keepdims=True) + eps)


def seed_with_background(scores, bg_power=2.0):
  """[B,H,W,C] normalised scores -> [B,H,W,C+1] with background (1 - max)^bg_power first."""
  bg = (1.0 - jnp.max(scores, axis=-1, keepdims=True)) ** bg_power
  return jnp.concatenate([bg, scores], axis=-1)


def seed_label_map(scores, bg_power=2.0):
  """Argmax of the seed (0 = background, c+1 = class c)."""
  return jnp.argmax(seed_with_background(scores, bg_power), axis=-1).astype(jnp.uint8)


def segmentation_label_map(seg, keep):
  """Argmax of the mean softmax over background and kept classes. seg [B,H,W,C+1]."""
  mask = jnp.concatenate([jnp.ones_like(keep[:, :1]), keep], axis=-1)
  return jnp.argmax(jnp.where(mask[:, None, None, :] > 0, seg, -1.0), axis=-1).astype(jnp.uint8)


def keep_classes(class_prob, labels=None, threshold=0.34):
  """Ground-truth labels for training images; classes above the threshold otherwise."""
  if labels is not None:
    return jnp.asarray(labels, jnp.float32)
  return (class_prob >= threshold).astype(jnp.float32)


def _quantize(x):
  return jnp.round(jnp.clip(x, 0, 1) * 255).astype(jnp.uint8)


def quantize(x):
  """[0, 1] floats -> uint8 (the compact seed storage)."""
  return np.asarray(_quantize(x))


def encode_seed(x, dtype='float16'):
  """Host: float scores in [0, 1] -> what the seed files store (config.infer.seed_dtype).

  'float16' keeps 11 significant bits (relative error <= 2^-11): the CRF's -log unary of values
  down to its 1e-5 clip moves by < 1e-3, so pseudo masks match float32 seeds'. 'uint8' (steps of
  1/255) halves the files, but every score below 1/510 becomes 0, which the CRF sees.
  """
  if dtype == 'float16':
    return np.asarray(x, np.float32).astype(np.float16)
  if dtype == 'uint8':
    return quantize(x)
  raise ValueError(f'config.infer.seed_dtype must be one of {SEED_DTYPES}, got {dtype!r}')


def dequantize(q):
  """Stored scores (uint8 steps of 1/255, or float16) -> float32."""
  q = np.asarray(q)
  return q.astype(np.float32) / 255.0 if q.dtype == np.uint8 else q.astype(np.float32)


@jax.jit
def seg_scores(seg, keep):
  """Seed scores from the segmentation head: kept foreground softmax channels, max-normalised."""
  return normalized_scores(seg[..., 1:], keep)


def host_seed(scores, bg_power=2.0):
  """Numpy twin of seed_with_background for one stored seed: [H,W,K] -> float32 [H,W,1+K].

  float32 throughout, as the authors' CRF input (their bg = (1 - max) ** gamma of float32 seeds).
  """
  s = dequantize(scores)
  top = s.max(axis=-1, keepdims=True) if s.shape[-1] else np.zeros(s.shape[:2] + (1,), s.dtype)
  return np.concatenate([(1.0 - top) ** np.float32(bg_power), s], axis=-1)


def host_seed_labels(scores, classes, bg_power=2.0):
  """A stored seed's label map: uint8 [H,W], 0 background, c + 1 for class index c."""
  lut = np.concatenate([[0], np.asarray(classes, np.int64) + 1]).astype(np.uint8)
  return lut[np.argmax(host_seed(scores, bg_power), axis=-1)]


# --- padding-exact multi-scale forward ---------------------------------------------------------
def _axis_weights(n_in, n_out, valid_in, valid_out, flip):
  """[B, n_out, n_in] bilinear weights taking the first valid_in entries onto the first valid_out.

  Half-pixel centres, no antialiasing and the source clamped to the valid entries: exactly what
  jax.image.resize (bilinear, antialias=False) does to the valid part alone. Outputs past
  valid_out get zero weight; `flip` [B] mirrors the valid outputs.
  """
  vi = valid_in.astype(jnp.float32)[:, None]
  vo = valid_out.astype(jnp.float32)[:, None]
  o = jnp.arange(n_out, dtype=jnp.float32)[None]
  inside = o < vo
  o = jnp.where(flip[:, None], vo - 1.0 - o, o)
  src = jnp.clip((o + 0.5) * (vi / vo) - 0.5, 0.0, vi - 1.0)
  lo = jnp.floor(src)
  frac = jnp.where(inside, src - lo, 0.0)[..., None]
  hi = jnp.minimum(lo + 1.0, vi - 1.0)
  i = jnp.arange(n_in, dtype=jnp.float32)
  w_lo = jnp.where((i == lo[..., None]) & inside[..., None], 1.0 - frac, 0.0)
  return w_lo + jnp.where(i == hi[..., None], frac, 0.0)


def _nearest_source(o, n_in, n_out):
  """torch's nearest index: floor(o * (n_in / n_out)) in float32, at most n_in - 1."""
  scale = n_in.astype(jnp.float32) / n_out.astype(jnp.float32)
  return jnp.minimum(jnp.floor(o * scale), n_in.astype(jnp.float32) - 1.0)


def _nearest_axis_weights(n_in, n_out, valid_in, valid_mid, valid_out, flip):
  """[B, n_out, n_in] one-hot weights of two nearest resizes, valid_in -> valid_mid -> valid_out.

  `flip` [B] mirrors the final outputs (the authors flip a pass's output after its last resize).
  """
  vo = valid_out.astype(jnp.float32)[:, None]
  o = jnp.arange(n_out, dtype=jnp.float32)[None]
  inside = o < vo
  o = jnp.where(flip[:, None], vo - 1.0 - o, o)
  src = _nearest_source(_nearest_source(o, valid_mid[:, None], valid_out[:, None]),
                        valid_in[:, None], valid_mid[:, None])
  i = jnp.arange(n_in, dtype=jnp.float32)
  return jnp.where((i == src[..., None]) & inside[..., None], 1.0, 0.0)


def _apply_axes(x, wh, ww):
  y = jnp.einsum('bhwc,bHh->bHwc', x, wh.astype(x.dtype), precision=_HIGHEST)
  return jnp.einsum('bhwc,bWw->bhWc', y, ww.astype(x.dtype), precision=_HIGHEST)


def _resize(x, valid_in, valid_out, size, flip):
  """Per image: the valid_in rectangle of x [B,h,w,C] resized onto the valid_out one of `size`."""
  wh = _axis_weights(x.shape[1], size[0], valid_in[:, 0], valid_out[:, 0], jnp.zeros_like(flip))
  ww = _axis_weights(x.shape[2], size[1], valid_in[:, 1], valid_out[:, 1], flip)
  return _apply_axes(x, wh, ww)


def _resize_nearest2(x, valid_in, valid_mid, valid_out, size, flip):
  """Per image: two nearest resizes (valid_in -> valid_mid -> valid_out of `size`), one gather."""
  wh = _nearest_axis_weights(x.shape[1], size[0], valid_in[:, 0], valid_mid[:, 0],
                             valid_out[:, 0], jnp.zeros_like(flip))
  ww = _nearest_axis_weights(x.shape[2], size[1], valid_in[:, 1], valid_mid[:, 1],
                             valid_out[:, 1], flip)
  return _apply_axes(x, wh, ww)


def _canvas(n, scale, align):
  """Canvas length at `scale` for a bucket of length n: holds every scaled image, aligned."""
  c = max(int(math.ceil(n * scale - 1e-6)), 1)
  return -(-c // align) * align


def scaled_size(hw, scale):
  """The authors' scaled size int(h * scale) (floor), at least 1; hw int [..., 2]."""
  return jnp.maximum(jnp.floor(hw.astype(jnp.float32) * scale), 1).astype(jnp.int32)


def _valid_at(valid_hw, canvas, size):
  """Valid cells of a map of spatial `size` on `canvas` (stride = canvas / size, ceil rounding)."""
  if canvas[0] % size[0] or canvas[1] % size[1]:
    return None
  stride = jnp.array([canvas[0] // size[0], canvas[1] // size[1]], jnp.int32)
  return -(-valid_hw // stride)


def _rect_mask(valid_hw, size):
  rows = jnp.arange(size[0])[None] < valid_hw[:, :1]
  cols = jnp.arange(size[1])[None] < valid_hw[:, 1:]
  return (rows[:, :, None] & cols[:, None, :])[..., None]


def _is_map(x):
  return isinstance(x, jax.Array) and x.ndim == 4


def _spreads(module):
  """Whether a module is a conv reading neighbours (1x1 convs keep padding in the padding)."""
  if not isinstance(module, nn.Conv):
    return False
  k = module.kernel_size
  return any(v > 1 for v in ((k,) if isinstance(k, int) else k))


def _padding_interceptor(valid_hw, canvas):
  """A flax method interceptor making a padded canvas compute what each image would alone.

  Convs wider than 1x1 see zeros past the valid cells (as their zero padding would show them;
  a 1x1 conv, even strided, maps valid cells from valid cells only); so does the
  stem's max pool (its input is post-ReLU, so zeros never win over a valid cell); the ASPP
  image pooling averages valid cells only; the decoder's upsampling (deeplab.Resize) resizes each
  image's valid cells onto its own valid cells. Masks are built once per resolution: the graph
  stays small (compile time).
  """
  masks, aspp_cells = {}, []

  def valid(y):
    return _valid_at(valid_hw, canvas, y.shape[1:3])

  def mask(y):
    key = (y.shape[1:3], y.dtype)
    if key not in masks:
      v = valid(y)
      masks[key] = None if v is None else _rect_mask(v, y.shape[1:3]).astype(y.dtype)
    return y if masks[key] is None else y * masks[key]

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != '__call__' or not args or not _is_map(args[0]):
      return next_fun(*args, **kwargs)
    x = args[0]
    if isinstance(module, deeplab.Resize):  # in float32 whatever the compute dtype
      size = tuple(int(v) for v in args[1])
      return _resize(x.astype(jnp.float32), valid(x), _valid_at(valid_hw, canvas, size), size,
                     jnp.zeros((x.shape[0],), bool)).astype(x.dtype)
    if isinstance(module, deeplab.ASPP) or _spreads(module):
      x = mask(x)
    if isinstance(module, deeplab.ASPP):
      v = valid(x)
      aspp_cells.append((x.shape[1] * x.shape[2]) / (v[:, 0] * v[:, 1]).astype(jnp.float32))
    elif isinstance(module.parent, deeplab.ASPP) and module.name == 'pool':
      # The canvas mean -> the valid mean (in float32 whatever the compute dtype).
      x = (x.astype(jnp.float32) * aspp_cells[-1][:, None, None, None]).astype(x.dtype)
    out = next_fun(x, *args[1:], **kwargs)
    if isinstance(module.parent, resnet.ResNet) and module.name == 'bn1':
      return mask(out)  # before ReLU and the stem's max pool
    return out

  return interceptor


def _take(x, channels):
  """x [B,h,w,C]'s channels [B,K] of each image (None: all)."""
  return x if channels is None else jnp.take_along_axis(x, channels[:, None, None, :], axis=-1)


def _seg_to_image(seg, seg_hw, pass_hw, image_hw, canvas, image_size, flips, interpolation,
                  channels=None):
  """One pass's segmentation logits -> softmax at the image (see the module docstring); with
  `channels` [B,K], only those channels of the softmax (over all) travel to the image."""
  if interpolation == 'probs_bilinear':
    return _resize(_take(jax.nn.softmax(seg, axis=-1), channels), seg_hw, image_hw, image_size,
                   flips)
  if interpolation == 'nearest':
    return _resize_nearest2(_take(jax.nn.softmax(seg, axis=-1), channels), seg_hw, pass_hw,
                            image_hw, image_size, flips)
  if interpolation == 'bilinear':
    logits = _resize(seg, seg_hw, pass_hw, canvas, jnp.zeros_like(flips))
    return _resize(_take(jax.nn.softmax(logits, axis=-1), channels), pass_hw, image_hw,
                   image_size, flips)
  raise ValueError(f'config.infer.interpolation must be one of {INTERPOLATIONS}, '
                   f'got {interpolation!r}')


def _pass_at_image(model, variables, x, hw, flips, scale, align, interpolation, classes=None):
  """One pass of every image of x at `scale` (mirrored where `flips`), back at the image.

  Returns the pass's share of the running sums at the bucket's size, zero past each image: seg
  (softmax [B,H,W,C+1]) and, with a CAM head, cam (relu CAM [B,H,W,C]) and prob (the sigmoid of
  the class logits [B,C], all classes). With `classes` [B,K] (class indices), seg and cam hold
  those classes only (seg without its background): what the seeds need of them.
  """
  hb, wb = x.shape[1:3]
  canvas = (_canvas(hb, scale, align), _canvas(wb, scale, align))
  hw_s = scaled_size(hw, scale)
  xs = _resize(x, hw, hw_s, canvas, flips)
  with nn.intercept_methods(_padding_interceptor(hw_s, canvas)):
    out = model.apply(variables, xs, train=False)
  has_cam = 'cam' in out
  cam_hw = _valid_at(hw_s, canvas, out['cam'].shape[1:3]) if has_cam else 0
  seg_hw = _valid_at(hw_s, canvas, out['seg'].shape[1:3])
  if cam_hw is None or seg_hw is None:
    raise ValueError(f'canvas {canvas} is not a multiple of the output strides; '
                     f'align={align} must be a multiple of the output stride')
  # Back to the image, un-mirroring the flipped images on the way.
  res = dict(seg=_seg_to_image(out['seg'], seg_hw, hw_s, hw, canvas, (hb, wb), flips,
                               interpolation, None if classes is None else classes + 1))
  if has_cam:
    cam = out['cam'] * _rect_mask(cam_hw, out['cam'].shape[1:3])
    logits = cam.sum((1, 2)) / (cam_hw[:, :1] * cam_hw[:, 1:]).astype(jnp.float32)
    res['cam'] = _resize(jax.nn.relu(_take(cam, classes)), cam_hw, hw, (hb, wb), flips)
    res['prob'] = jax.nn.sigmoid(logits)
  return res


def _add_at(total, part, index):
  """total[:, index] + part written in place (total donated): the orientation's running sum."""
  current = jax.lax.dynamic_index_in_dim(total, index, 1, keepdims=False)
  return jax.lax.dynamic_update_index_in_dim(total, current + part, index, 1)


def _batch_sharding(x):
  """x's sharding over the batch axis, for arrays of any rank; None for one device (there an
  explicit placement would only change the compile cache's key)."""
  s = getattr(x, 'sharding', None)
  if isinstance(s, jax.sharding.NamedSharding):
    return jax.sharding.NamedSharding(s.mesh, jax.sharding.PartitionSpec(*s.spec[:1]))
  return None


def _abstract(tree):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), tree)


class Predictor:
  """Multi-scale + flip inference: `predict(variables, images, valid_hw=None) -> dict`.

  Made by make_predict_fn (its docstring says what comes out). The passes run one after another:
  one jitted function per scale adds its pass into running sums at the bucket's size, [B, O, H,
  W, C] for O orientations, which it takes donated, so only the sums, the inputs and one pass are
  ever alive (docs/inference.md, "Memory"). The orientation is an argument: each scale compiles
  once per bucket and serves both. `classes` [B,K] (class indices, e.g. an image's labels)
  keeps only those classes' channels from each pass's softmax (over all) and CAM on: the sums and
  outputs hold K channels, seg without its background (the seeds need no more). `unrolled=True`
  runs every pass in one jitted function, the orientations side by side in one batch, as
  before: XLA then plans the passes alive together (bench/infer.py --unrolled compares the
  two). Both give the same numbers to float precision (tests/test_infer.py). `heads`: the
  network outputs to sum, of 'seg' and 'cam' (None: every one it has); a head left out is never
  computed (XLA drops what nothing reads), e.g. ('cam',) for the plain-CAM baseline's seeds.
  """

  def __init__(self, model, scales, flip, align, interpolation, unrolled=False, heads=None):
    if interpolation not in INTERPOLATIONS:
      raise ValueError(f'config.infer.interpolation must be one of {INTERPOLATIONS}, '
                       f'got {interpolation!r}')
    self.model = model
    self.scales = tuple(float(s) for s in scales)
    self.orientations = (0, 1) if flip else (0,)
    self.align, self.interpolation, self.unrolled = align, interpolation, unrolled
    if heads is not None and (not heads or set(heads) - set(HEADS)):
      raise ValueError(f'heads must be some of {HEADS}, got {heads!r}')
    self.heads = None if heads is None else tuple(h for h in HEADS if h in heads)
    self._channels = None
    self._unrolled = jax.jit(self._unrolled_sums)
    self._passes = {}  # {placement of the sums: {name: jitted pass}}
    self._mean = jax.jit(self.finish)

  def _contribution(self, variables, x, hw, flips, scale, classes):
    return _pass_at_image(self.model, variables, x, hw, flips, scale, self.align,
                          self.interpolation, classes)

  def passes(self, where=None):
    """{name: jitted pass} of each scale, their sums placed at `where` (a batch sharding).

    The sums keep one placement from the zeros to the last pass, so each pass compiles once.
    """
    if where not in self._passes:
      self._passes[where] = {
          f'scale {s:g}': jax.jit(functools.partial(self._add_pass, s), donate_argnums=4,
                                  out_shardings=where) for s in self.scales}
    return self._passes[where]

  def _add_pass(self, scale, variables, x, hw, orientation, sums, classes):
    """sums (donated) + the pass at `scale`, as is (orientation 0) or mirrored (1)."""
    flips = jnp.broadcast_to(orientation == 1, x.shape[:1])
    res = self._contribution(variables, x, hw, flips, scale, classes)
    return {k: _add_at(sums[k], res[k], orientation) for k in sums}

  def _unrolled_sums(self, variables, x, hw, classes):
    b, o = x.shape[0], len(self.orientations)
    keys = self.sum_shapes(variables, x, classes)
    flips = jnp.tile(jnp.asarray(self.orientations) == 1, b)  # each image, then its mirror
    x, hw = jnp.repeat(x, o, axis=0), jnp.repeat(hw, o, axis=0)
    classes = None if classes is None else jnp.repeat(classes, o, axis=0)
    sums = {}
    for s in self.scales:
      res = self._contribution(variables, x, hw, flips, s, classes)
      sums = {k: sums[k] + res[k] if k in sums else res[k] for k in keys}
    return {k: v.reshape((b, o) + v.shape[1:]) for k, v in sums.items()}

  def finish(self, sums):
    """Running sums -> dict(cam, seg, class_prob), the means over the passes (traceable)."""
    n = len(self.scales) * len(self.orientations)

    def total(v):  # orientation 0 + orientation 1, in the order the one-function form added them
      return v[:, 0] + v[:, 1] if v.shape[1] == 2 else v[:, 0]

    if 'seg' not in sums:  # heads=('cam',)
      return dict(cam=total(sums['cam']) / n, class_prob=total(sums['prob']) / n)
    seg = total(sums['seg']) / n
    if 'cam' not in sums:  # seg is zero past the valid size, so the max sees the image only
      return dict(seg=seg, class_prob=jnp.max(seg[..., 1:], axis=(1, 2)))
    return dict(cam=total(sums['cam']) / n, seg=seg, class_prob=total(sums['prob']) / n)

  def sum_shapes(self, variables, x, classes=None):
    """{name: ShapeDtypeStruct} of the running sums of a batch like x (and classes)."""
    if self._channels is None:  # the network's output channels: one trace, no compute
      out = jax.eval_shape(functools.partial(self.model.apply, train=False), _abstract(variables),
                           jax.ShapeDtypeStruct((1,) + tuple(x.shape[1:]), jnp.float32))
      self._channels = {k: out[k].shape[-1] for k in HEADS if k in out}
    if classes is not None and 'cam' not in self._channels:
      raise ValueError('classes= needs a network with a CAM head (its class probabilities)')
    missing = set(self.heads or ()) - set(self._channels)
    if missing:
      raise ValueError(f'heads={self.heads} asks for {sorted(missing)}, which this network '
                       f'({type(self.model).__name__}) does not have')
    lead = (x.shape[0], len(self.orientations))
    shapes = {k: lead + tuple(x.shape[1:3]) + (c if classes is None else classes.shape[1],)
              for k, c in self._channels.items() if self.heads is None or k in self.heads}
    if 'cam' in shapes:
      shapes['prob'] = lead + (self._channels['cam'],)
    return {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in shapes.items()}

  def _valid_hw(self, x, valid_hw):
    if valid_hw is None:
      return jnp.broadcast_to(jnp.array(x.shape[1:3], jnp.int32), (x.shape[0], 2))
    return jnp.asarray(valid_hw, jnp.int32)

  def accumulate(self, variables, x, valid_hw=None, classes=None):
    """Host: the running sums of every pass over a batch (dispatched, not waited for)."""
    x = jnp.asarray(x)
    hw = self._valid_hw(x, valid_hw)
    if self.unrolled:
      return self._unrolled(variables, x, hw, classes)
    where = _batch_sharding(x)
    sums = {k: jnp.zeros(s.shape, s.dtype, device=where)
            for k, s in self.sum_shapes(variables, x, classes).items()}
    for add in self.passes(where).values():
      for o in self.orientations:
        sums = add(variables, x, hw, np.int32(o), sums, classes)
    return sums

  def __call__(self, variables, images, valid_hw=None, classes=None):
    return self._mean(self.accumulate(variables, images, valid_hw, classes))

  def plan_parts(self, variables, x, hw, classes=None):
    """[(name, jitted, abstract args)]: what accumulate compiles and runs for a batch like x."""
    if self.unrolled:
      return [('passes', self._unrolled, _abstract((variables, x, hw, classes)))]
    sums = self.sum_shapes(variables, x, classes)
    o = jax.ShapeDtypeStruct((), jnp.int32)
    return [(f'pass {name}', f, _abstract((variables, x, hw)) + (o, sums, _abstract(classes)))
            for name, f in self.passes().items()]

  def jitted(self):
    return [self._unrolled, self._mean] + [f for fns in self._passes.values() for f in fns.values()]

  def fresh(self, heads=None):
    """The same predictor with caches of its own (a step counts its own compilations); with
    `heads`, summing those heads only."""
    return Predictor(self.model, self.scales, len(self.orientations) == 2, self.align,
                     self.interpolation, self.unrolled, self.heads if heads is None else heads)


def make_predict_fn(model, scales=(1.0,), flip=True, align=32, interpolation='probs_bilinear',
                    unrolled=False):
  """Returns `predict(variables, images, valid_hw=None) -> dict(cam, seg, class_prob)`.

  images: float [B,H,W,3] normalised, each image's valid part top-left; valid_hw: int [B,2] its
  size (None: the whole array). align: canvas multiple, a multiple of the model's output stride.
  interpolation: how the segmentation head reaches the image (module docstring).
  cam: mean over passes of relu(CAM) resized bilinearly to the image [B,H,W,C]; seg: mean softmax
  of the segmentation head [B,H,W,C+1]; both zero past the valid size. class_prob: mean sigmoid
  of the class logits [B,C]. A network without a CAM (models.DeepLabNet, the multi-stage
  segmenter) gives seg only, and class_prob = the max over the image of each class's mean softmax
  (METHOD.md section 5). A Predictor: the passes run one after another (`unrolled`: all in one
  jitted function, which XLA plans all alive at once); `predict(..., classes=[B,K])` keeps only
  those classes in cam and seg (Predictor).
  """
  return Predictor(model, scales, flip, align, interpolation, unrolled)


def _normalise_images(images, mean, std):
  """uint8 [B,H,W,3] -> the network's input, (x / 255 - mean) / std in float32 (the authors')."""
  return (images.astype(jnp.float32) / 255.0 - mean) / std


class Step:
  """`step(variables, images, valid_hw, labels) -> dict` of per-image products, in jitted parts.

  The normalisation (and `classes_of(labels)`: the classes the passes keep, or None for all),
  the passes (Predictor.accumulate), then `products(out, labels)` of the mean outputs. Every part
  compiles once per bucket (and per labels / no labels); `_cache_size()` is the most
  compilations of any part, `compilations()` their total; the step's predictor is its own copy,
  so the counts are this step's; `heads` sets its heads (Predictor). Made by make_infer_step
  and make_segmenter_step.
  """

  def __init__(self, predict, mean, std, products, classes_of=None, heads=None):
    self.predict = predict = predict.fresh(heads)
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)

    def prepare(images, labels):
      keep = None if labels is None or classes_of is None else classes_of(labels)
      return _normalise_images(images, mean, std), keep

    self._prepare = jax.jit(prepare)
    self._products = jax.jit(lambda sums, labels: products(predict.finish(sums), labels))

  def __call__(self, variables, images, valid_hw, labels):
    x, classes = self._prepare(images, labels)
    sums = self.predict.accumulate(variables, x, valid_hw, classes)
    del x  # freed once the last pass has read it
    return self._products(sums, labels)

  def _jitted(self):
    return [self._prepare, self._products] + self.predict.jitted()

  def _cache_size(self):
    return max(f._cache_size() for f in self._jitted())

  def compilations(self):
    return sum(f._cache_size() for f in self._jitted())

  def plan_parts(self, variables, images, valid_hw, labels):
    """[(name, jitted, abstract args, the step inputs among them)] of a batch like these, in the
    order they run."""
    x, classes = jax.eval_shape(self._prepare, *_abstract((images, labels)))
    sums = (jax.eval_shape(self.predict._unrolled, *_abstract((variables, x, valid_hw, classes)))
            if self.predict.unrolled else self.predict.sum_shapes(variables, x, classes))
    passes = [p + (('variables', 'valid_hw'),)
              for p in self.predict.plan_parts(variables, x, valid_hw, classes)]
    return ([('normalise', self._prepare, _abstract((images, labels)), ('images', 'labels'))] +
            passes + [('products', self._products, (sums, _abstract(labels)), ('labels',))])


def _nbytes(tree):
  return sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(tree))


def memory_plan(step, variables, images, valid_hw, labels):
  """XLA's memory plan of a Step for a batch like these (arrays or ShapeDtypeStructs).

  Compiles each part ahead of time (nothing runs) and reads compiled.memory_analysis(). Returns
  [dict(part, temp, argument, output, alias, held, live)] in bytes, in running order: held is
  what the step's other inputs take meanwhile (the caller keeps them), live = argument + output
  - alias (donated buffers reused) + temp + held, the part's peak. The step's plan is the part
  with the largest live.
  """
  inputs = dict(variables=variables, images=images, valid_hw=valid_hw, labels=labels)
  rows = []
  for name, jitted, args, takes in step.plan_parts(variables, images, valid_hw, labels):
    m = jitted.lower(*args).compile().memory_analysis()
    held = sum(_nbytes(v) for k, v in inputs.items() if k not in takes)
    row = dict(part=name, temp=m.temp_size_in_bytes, argument=m.argument_size_in_bytes,
               output=m.output_size_in_bytes, alias=m.alias_size_in_bytes, held=held)
    row['live'] = row['argument'] + row['output'] - row['alias'] + row['temp'] + held
    rows.append(row)
  return rows


def kept_order(keep, num_kept):
  """[B,K] class indices: the kept classes first (stable: in class order), then the others, so
  K channels hold every kept class."""
  return jnp.argsort(keep <= 0, axis=-1, stable=True)[:, :num_kept]


def _seed_products(out, labels, class_threshold, num_kept):
  """make_infer_step's products of the mean outputs (its docstring). With labels, the passes
  kept the classes of kept_order already (Step's classes_of)."""
  keep = keep_classes(out['class_prob'], labels, class_threshold)
  if num_kept is None:
    return dict(class_prob=out['class_prob'], keep=keep > 0,
                pred=segmentation_label_map(out['seg'], keep))
  order = kept_order(keep, num_kept)
  kept = jnp.take_along_axis(keep, order, axis=-1)
  res = dict(class_prob=out['class_prob'],
             classes=jnp.where(kept > 0, order, -1).astype(jnp.int32))
  for key in ('cam', 'seg'):
    if key in out:  # seg is absent from a CAM-only step (heads=('cam',))
      scores = out[key]
      if labels is None:  # kept by threshold: the passes kept every class
        scores = _take(scores if key == 'cam' else scores[..., 1:], order)
      res[key] = normalized_scores(scores, kept)
  return res


def make_infer_step(predict, mean, std, class_threshold=0.34, num_kept=None, heads=None):
  """Returns `step(variables, images, valid_hw, labels) -> dict` of per-image products (a Step).

  predict: a make_predict_fn Predictor. images: uint8 [B,H,W,3] padded; valid_hw int [B,2];
  labels float [B,C] (classes kept: the image labels) or None (classes kept: mean probability >=
  class_threshold).
  Returns class_prob [B,C] and, with num_kept None (predictions): keep bool [B,C] and pred uint8
  [B,H,W] (argmax over background + kept classes); with num_kept = K (seeds): classes int32
  [B,K] (the kept class indices in order, then -1) and float32 [B,H,W,K] seeds of those classes,
  `cam` (max-normalised CAM) and `seg` (max-normalised segmentation softmax: the authors' seed).
  Seeds stay float here; the host stores them (encode_seed) and hands the CRF what it stored.
  heads=('cam',) (seeds only): the segmentation head is never run and `seg` is not returned
  (the plain-CAM baseline's seeds need its CAM alone).
  """
  if heads is not None and 'seg' not in heads and num_kept is None:
    raise ValueError("predictions (num_kept=None) need the segmentation head: heads=('cam',) "
                     'makes seeds only')
  products = functools.partial(_seed_products, class_threshold=class_threshold,
                               num_kept=num_kept)
  classes_of = None if num_kept is None else functools.partial(kept_order, num_kept=num_kept)
  return Step(predict, mean, std, products, classes_of, heads)


def _segmenter_products(out, labels, class_threshold, max_classes):
  """make_segmenter_step's products of the mean softmax (its docstring)."""
  del labels
  seg = out['seg']
  peak = jnp.max(seg, axis=(1, 2))  # [B, C+1]; seg is zero past the valid size
  keep = peak >= class_threshold
  k = min(int(max_classes), seg.shape[-1])
  order = jnp.argsort(jnp.where(keep, -peak, 1.0), axis=-1, stable=True)[:, :k]
  kept = jnp.take_along_axis(keep, order, axis=-1)
  channels = jnp.where(kept, order, -1).astype(jnp.int32)
  probs = jnp.take_along_axis(seg, order[:, None, None, :], axis=-1) * kept[:, None, None]
  best = jnp.argmax(jnp.where(kept[:, None, None], probs, -1.0), axis=-1)
  pred = jnp.take_along_axis(jnp.maximum(channels, 0), best.reshape(best.shape[0], -1), axis=-1)
  return dict(class_prob=peak[:, 1:], channels=channels, probs=probs,
              pred=pred.reshape(best.shape).astype(jnp.uint8))


def make_segmenter_step(predict, mean, std, class_threshold=0.05, max_classes=8):
  """Returns `step(variables, images, valid_hw, labels) -> dict` for the segmenter (a Step).

  The multi-stage prediction as the authors make it (infer_seg.py, then their CRF script): every
  label, background included, whose mean softmax reaches `class_threshold` somewhere in the image
  is kept (at most `max_classes`, the most probable first); `channels` int32 [B,K] are the kept
  label ids (0 = background, c + 1 = class c; then -1) and `probs` float32 [B,H,W,K] their mean
  softmax, not renormalised (the CRF's unary is -log of it). `pred` uint8 [B,H,W] is the argmax
  over the kept labels (the product without CRF). class_prob [B,C]: each class's max
  probability. `labels` is ignored (the same call as make_infer_step's, so run_split drives both).
  """
  return Step(predict, mean, std, functools.partial(
      _segmenter_products, class_threshold=class_threshold, max_classes=max_classes))


def step_from_config(config, model, num_kept=None, segmenter=False, unrolled=False, heads=None):
  """The step a stage runs: make_infer_step (seeds with num_kept = K, else predictions; `heads`
  as there) or, for the multi-stage segmenter, make_segmenter_step; scales, flip, interpolation
  from config.infer, and the network computes in config.infer.dtype (its parameters, the
  softmax, the resizes and the products stay float32). `unrolled`: every pass in one jitted
  function (the memory comparison of bench/infer.py)."""
  model = model.clone(dtype=models.COMPUTE_DTYPES[config.infer.dtype])
  predict = make_predict_fn(model, config.infer.scales, config.infer.flip,
                            align=config.model.output_stride,
                            interpolation=config.infer.interpolation, unrolled=unrolled)
  if segmenter:
    return make_segmenter_step(predict, config.data.mean, config.data.std,
                               config.infer.class_threshold, config.seg.max_classes)
  return make_infer_step(predict, config.data.mean, config.data.std, config.infer.class_threshold,
                         num_kept, heads)

# --- host side: buckets, batches, the loop -----------------------------------------------------
def pick_bucket(size, buckets):
  """Index of the smallest-area bucket (H, W) holding an image of `size`, or None."""
  fits = [(b[0] * b[1], i) for i, b in enumerate(buckets) if size[0] <= b[0] and size[1] <= b[1]]
  return min(fits)[1] if fits else None


def plan_batches(split, indices, buckets, batch_size):
  """[((H, W), [image indices])]: grouped by bucket, in order, at most batch_size each.

  buckets: [(H, W)]; each image goes to the smallest (by area) that holds it. Empty: one bucket,
  the largest height and width among these images.
  """
  sizes = {i: tuple(int(v) for v in split.size(i)) for i in indices}
  if not sizes:
    return []
  buckets = [tuple(int(v) for v in b) for b in buckets]
  if not buckets:
    buckets = [tuple(max(s[d] for s in sizes.values()) for d in (0, 1))]
  groups = {}
  for i, size in sizes.items():
    b = pick_bucket(size, buckets)
    if b is None:
      raise ValueError(f'image {split.ids[i]!r} is {size[0]}x{size[1]}, larger than every bucket '
                       f'in config.infer.buckets={tuple(buckets)}; add a bucket that holds it')
    groups.setdefault(b, []).append(i)
  return [(buckets[b], groups[b][k:k + batch_size]) for b in sorted(groups)
          for k in range(0, len(groups[b]), batch_size)]


def load_batch(split, indices, bucket, batch_size, with_labels):
  """Decodes and pads one batch: images uint8 [B,H,W,3], valid_hw int32 [B,2], labels or None."""
  h, w = bucket
  images = np.zeros((batch_size, h, w, 3), np.uint8)
  valid_hw = np.tile(np.array([[h, w]], np.int32), (batch_size, 1))  # padding entries: full
  for j, i in enumerate(indices):
    image = np.asarray(split.image(i))
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
      raise ValueError(f'image {split.ids[i]!r}: expected uint8 [H, W, 3], got '
                       f'{image.dtype} {image.shape}')
    if image.shape[0] > h or image.shape[1] > w:
      raise ValueError(f'image {split.ids[i]!r} is {image.shape[:2]}, larger than its bucket '
                       f'{bucket} (split.size({i}) said otherwise)')
    images[j, :image.shape[0], :image.shape[1]] = image
    valid_hw[j] = image.shape[:2]
  labels = None
  if with_labels:
    labels = np.zeros((batch_size, split.labels.shape[1]), np.float32)
    labels[:len(indices)] = split.labels[indices]
  return dict(indices=list(indices), images=images, valid_hw=valid_hw, labels=labels)


def _unpack(batch, outs):
  """Per real image of a finished batch: (index, image, {name: cropped numpy products})."""
  outs = jax.device_get(outs)
  for j, i in enumerate(batch['indices']):
    h, w = (int(v) for v in batch['valid_hw'][j])
    per_model = {}
    for name, out in outs.items():
      res = {'class_prob': out['class_prob'][j]}
      if 'probs' in out:  # the segmenter (make_segmenter_step)
        k = int((out['channels'][j] >= 0).sum())
        res['channels'] = out['channels'][j, :k]
        res['probs'] = out['probs'][j, :h, :w, :k]
        res['pred'] = out['pred'][j, :h, :w]
      elif 'pred' in out:
        res['keep'] = np.flatnonzero(out['keep'][j])
        res['pred'] = out['pred'][j, :h, :w]
      else:
        k = int((out['classes'][j] >= 0).sum())
        res['classes'] = out['classes'][j, :k]
        for key in ('cam', 'seg'):
          if key in out:
            res[key] = out[key][j, :h, :w, :k]
      per_model[name] = res
    yield i, batch['images'][j, :h, :w], per_model


def run_split(step, variables, split, indices, buckets, batch_size, *, with_labels,
              todo=None, sharding=None, prefetch=2, progress=None, streams=1):
  """Runs `step` (make_infer_step) of every model over the images `indices` of a split.

  Args:
    step: the jitted step; compiles once per bucket (and per labels / no labels); or {name:
      step}, each model's own (e.g. a CAM-only step for one of them).
    variables: {name: model variables}; each batch runs every model (one decode per image).
    split: data_pipeline/splits.py interface.
    indices: which images: all that a run without interruption would take (they set the
      batches, and XLA:CPU's results can depend on an image's batch and its place in it).
    todo: of those, the ones to yield (e.g. those without outputs yet; None: all). Only the
      batches holding one run, whole, so that a resumed run gives an uninterrupted one's values.
    buckets: [(H, W)]; each image goes to the smallest that holds it (see plan_batches).
    batch_size: fixed per call; with a sharding, a multiple of the device count.
    with_labels: keep the image labels' classes (training images) or threshold (val/test).
    sharding: a jax.sharding.Sharding for the batch (e.g. NamedSharding(mesh, P('data'))), or
      None for the default device; variables should then be replicated by the caller.
    prefetch: batches decoded ahead on a background thread.
    progress: object with update(n), e.g. a tqdm bar.
    streams: batches computed at once, each from its own host thread (the same batches, so the
      same numbers). On the CPU one small batch's passes leave cores idle: two at once ran the
      demo's seeds 1.5x faster (bench/infer.py --streams). Each takes its batch's memory; the
      first batch of each bucket runs alone, so its programs compile once.

  Yields:
    (index, image uint8 [h, w, 3], {name: products}) per image, bucket by bucket; products as
    make_infer_step's, cropped to the image and, for seeds, to its kept classes.
  """
  plan = plan_batches(split, indices, buckets, batch_size)
  if todo is not None:
    todo = set(todo)
    plan = [(bucket, idx) for bucket, idx in plan if todo.intersection(idx)]
  batches = (load_batch(split, idx, bucket, batch_size, with_labels) for bucket, idx in plan)
  put = (lambda a: a) if sharding is None else (lambda a: jax.device_put(a, sharding))
  steps = step if isinstance(step, dict) else dict.fromkeys(variables, step)

  def dispatch(batch):
    args = [put(batch['images']), put(batch['valid_hw'])]
    labels = None if batch['labels'] is None else put(batch['labels'])
    return batch, {name: steps[name](v, *args, labels) for name, v in variables.items()}

  loaded = io_utils.background_iter(batches, prefetch)
  if streams > 1:
    yield from _run_streams(dispatch, loaded, streams, todo, progress)
    return
  pending = None
  for batch in loaded:
    done = dispatch(batch)
    if pending is not None:  # dispatch is asynchronous: this one runs while we unpack the last
      yield from _wanted(pending, todo, progress)
    pending = done
  if pending is not None:
    yield from _wanted(pending, todo, progress)


def _run_streams(dispatch, batches, streams, todo, progress):
  """run_split's loop with `streams` batches computed at once, yielded in order."""

  def compute(batch):
    batch, outs = dispatch(batch)
    return batch, jax.device_get(outs)

  window = collections.deque()  # futures, oldest first
  bucket = None
  with concurrent.futures.ThreadPoolExecutor(streams, thread_name_prefix='infer') as pool:
    for batch in batches:
      alone = batch['images'].shape != bucket  # a new bucket's first: its programs compile once
      if alone:
        bucket = batch['images'].shape
        while window:
          yield from _wanted(window.popleft().result(), todo, progress)
      window.append(pool.submit(compute, batch))
      if alone or len(window) >= streams:
        yield from _wanted(window.popleft().result(), todo, progress)
    while window:
      yield from _wanted(window.popleft().result(), todo, progress)


def _wanted(pending, todo, progress):
  """_unpack's items of the images in `todo` (all when None), counted on the progress bar."""
  n = 0
  for item in _unpack(*pending):
    if todo is None or item[0] in todo:
      n += 1
      yield item
  if progress is not None:
    progress.update(n)


class Engine:
  """The stages' inference: models restored on first use, one compiled step per kind of output,
  every batch sharded over this host's devices.

  restore(subfolder) -> (model, variables) gives a trained network of the workdir (e.g.
  train.restore_variables); every model must share one architecture, so they share the step.
  segmenter: the models are the multi-stage DeepLabNets (make_segmenter_step).
  """

  def __init__(self, config, restore, segmenter=False):
    self.config = config
    self.restore = restore
    self.segmenter = segmenter
    self.mesh = parallel.make_mesh(jax.local_devices())
    if config.infer.batch_size % self.mesh.size:
      raise ValueError(f'config.infer.batch_size={config.infer.batch_size} must be a multiple of '
                       f'the {self.mesh.size} devices (each takes an equal share of a batch)')
    self.sharding = parallel.batch_sharding(self.mesh) if self.mesh.size > 1 else None
    # Several devices: one stream, as programs sharded over them could interleave collectives.
    self.streams = int(config.infer.streams) if self.mesh.size == 1 else 1  # >= 1: config_lib
    self.model = None
    self._variables = {}
    self._steps = {}

  def variables(self, name):
    if name not in self._variables:
      model, v = self.restore(name)
      if self.model is None:  # one architecture: every run shares the compiled step
        self.model = model
      self._variables[name] = v if self.sharding is None else parallel.replicate(v, self.mesh)
    return self._variables[name]

  def step(self, num_kept, heads=None):
    key = (num_kept, heads)
    if key not in self._steps:
      self._steps[key] = step_from_config(self.config, self.model, num_kept, self.segmenter,
                                          heads=heads)
    return self._steps[key]

  def run_split(self, names, split, indices, num_kept, desc, todo=None, heads=None):
    """run_split of the models in workdir subfolders `names` ({key: subfolder}), with a bar;
    heads: {key: heads} of the models that need only some (make_infer_step)."""
    cfg = self.config
    variables = {key: self.variables(name) for key, name in names.items()}
    heads = heads or {}
    steps = {key: self.step(num_kept, heads.get(key)) for key in names}
    total = len(indices if todo is None else todo)
    with tqdm(total=total, desc=desc, unit='img', dynamic_ncols=True) as bar:
      yield from run_split(steps, variables, split, indices, cfg.infer.buckets,
                           cfg.infer.batch_size, with_labels=num_kept is not None, todo=todo,
                           sharding=self.sharding, prefetch=cfg.infer.prefetch, progress=bar,
                           streams=self.streams)
