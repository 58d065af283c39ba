"""Per-example training augmentation (METHOD.md section 4) as tf functions.

Every function works on one example: `image` [H, W, 3] (uint8, or float32 in [0, 1] after
`to_float`), `mask` uint8 [H, W] with 0 = background, 1..C = classes and 255 = ignore. All
randomness comes from stateless ops driven by an explicit `seed` (an int32/int64 tensor of shape
[2]); the pipeline derives that seed from (global seed, epoch, example index), so an example's
augmentation is the same whatever the parallelism, batch size or process count.

The order used by the pipeline follows the authors' released training code: rescale -> flip ->
colour jitter -> normalise -> crop/pad. Padding therefore happens after normalisation, so a padded
pixel is exactly 0 at the network input (the mean colour), and 255 (ignore) in the mask.
"""

import os

# Before the first tensorflow import: keep TF's C++ log spam out of the training logs.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import tensorflow as tf

IGNORE_LABEL = 255


def split_seed(seed, num):
  """Returns `num` independent stateless seeds [2] derived from `seed` (a list of them)."""
  return tf.unstack(tf.random.experimental.stateless_split(seed, num=num))


def to_float(image):
  """uint8 [0, 255] (or float [0, 1]) -> float32 in [0, 1]."""
  return tf.image.convert_image_dtype(image, tf.float32)


def _resize(image, mask, size):
  """Resizes image (bilinear) and mask (nearest) to `size` = [h, w]; keeps the image dtype."""
  dtype = image.dtype
  # antialias: on downscaling this matches PIL's resize used by the reference code (a filter whose
  # support grows with the scale) instead of sampling only the 2x2 nearest pixels.
  resized = tf.image.resize(tf.cast(image, tf.float32), size, method='bilinear', antialias=True)
  if dtype == tf.uint8:
    resized = tf.saturate_cast(tf.round(resized), tf.uint8)
  else:
    resized = tf.cast(resized, dtype)
  # Nearest never invents labels: class ids and the 255 ignore value survive as they are.
  mask = tf.image.resize(mask[..., None], size, method='nearest')[..., 0]
  return resized, tf.cast(mask, tf.uint8)


def random_rescale(image, mask, scale_range, seed, long_side_range=None):
  """Randomly rescales an example; exactly one of the two modes is given.

  Args:
    image: [H, W, 3] uint8 or float image.
    mask: [H, W] uint8 mask.
    scale_range: (lo, hi) factor range, uniform, applied to both sides (synthetic demo); or None.
    seed: stateless seed, int tensor [2].
    long_side_range: (lo, hi) integer range for the target length of the long side, uniform and
      inclusive as in the reference code (VOC: (320, 640)); or None.

  Returns:
    (image, mask) resized; the image keeps its dtype (uint8 is rounded back, like a PIL resize).
  """
  if (scale_range is None) == (long_side_range is None):
    raise ValueError('random_rescale: give exactly one of scale_range (a factor range) and '
                     f'long_side_range (pixels); got {scale_range=} and {long_side_range=}.')
  shape = tf.shape(image)
  hw = tf.cast(shape[:2], tf.float32)
  if scale_range is not None:
    lo, hi = scale_range
    scale = tf.random.stateless_uniform([], seed, minval=lo, maxval=hi, dtype=tf.float32)
  else:
    lo, hi = long_side_range
    target = tf.random.stateless_uniform([], seed, minval=int(lo), maxval=int(hi) + 1,
                                         dtype=tf.int32)
    scale = tf.cast(target, tf.float32) / tf.reduce_max(hw)
  size = tf.maximum(tf.cast(tf.round(hw * scale), tf.int32), 1)
  return _resize(image, mask, size)


def random_flip(image, mask, seed):
  """Horizontal flip of image and mask together with probability 1/2."""
  coin = tf.random.stateless_uniform([], seed) < 0.5
  return tf.cond(coin,
                 lambda: (tf.reverse(image, [1]), tf.reverse(mask, [1])),
                 lambda: (image, mask))


def color_jitter(image, brightness, contrast, saturation, hue, seed):
  """torchvision-style ColorJitter on a float image in [0, 1]; a strength of 0 turns an op off.

  Factors follow torchvision's meaning of the reference config (0.3, 0.3, 0.3, 0.1): brightness,
  contrast and saturation multiply by a factor uniform in [1 - s, 1 + s], hue shifts by a uniform
  amount in [-h, h] of a full turn. The ops run in a fixed order (torchvision shuffles it), each
  followed by a clip to [0, 1].

  Args:
    image: [H, W, 3] float32 in [0, 1] (uint8 is converted).
    brightness: strength >= 0.
    contrast: strength >= 0.
    saturation: strength >= 0.
    hue: strength in [0, 0.5].
    seed: stateless seed, int tensor [2].

  Returns:
    The jittered float32 image in [0, 1].
  """
  image = to_float(image)
  # One sub-seed per op, always drawn, so turning one op off does not change the others' draws.
  k_b, k_c, k_s, k_h = split_seed(seed, 4)

  def factor(strength, key):
    return tf.random.stateless_uniform([], key, 1.0 - strength, 1.0 + strength)

  if brightness:
    # Multiplicative, as torchvision; tf.image.adjust_brightness would add a delta instead.
    image = tf.clip_by_value(image * factor(brightness, k_b), 0.0, 1.0)
  if contrast:
    image = tf.clip_by_value(tf.image.adjust_contrast(image, factor(contrast, k_c)), 0.0, 1.0)
  if saturation:
    image = tf.clip_by_value(tf.image.adjust_saturation(image, factor(saturation, k_s)), 0.0, 1.0)
  if hue:
    delta = tf.random.stateless_uniform([], k_h, -hue, hue)
    image = tf.clip_by_value(tf.image.adjust_hue(image, delta), 0.0, 1.0)
  return image


def normalize(image, mean, std):
  """(image - mean) / std per channel, on a float image in [0, 1]."""
  mean = tf.constant(mean, tf.float32)
  std = tf.constant(std, tf.float32)
  return (to_float(image) - mean) / std


def random_crop_pad(image, mask, crop, seed):
  """Pads to at least crop x crop, then takes a random crop x crop window.

  A side shorter than `crop` is padded by the shortfall on both ends, so the random window places
  the whole image at a uniformly random position (as the reference code's crop container does); a
  longer side gets a uniformly random window inside the image. Image and mask share the window.

  Args:
    image: [H, W, 3] image (any dtype); padded with 0.
    mask: [H, W] uint8 mask; padded with 255 (ignore).
    crop: crop size (python int).
    seed: stateless seed, int tensor [2].

  Returns:
    (image [crop, crop, 3], mask [crop, crop], valid bool [crop, crop]); valid is False exactly on
    the padding (the mask's own 255 pixels stay valid: they are a label, not padding).
  """
  shape = tf.shape(image)
  pad_h = tf.maximum(crop - shape[0], 0)
  pad_w = tf.maximum(crop - shape[1], 0)
  paddings = [[pad_h, pad_h], [pad_w, pad_w]]
  image = tf.pad(image, paddings + [[0, 0]], constant_values=0)
  mask = tf.pad(mask, paddings, constant_values=IGNORE_LABEL)
  valid = tf.pad(tf.ones(shape[:2], tf.bool), paddings, constant_values=False)

  k_y, k_x = split_seed(seed, 2)
  padded = tf.shape(mask)
  top = tf.random.stateless_uniform([], k_y, 0, padded[0] - crop + 1, dtype=tf.int32)
  left = tf.random.stateless_uniform([], k_x, 0, padded[1] - crop + 1, dtype=tf.int32)
  image = image[top:top + crop, left:left + crop]
  mask = mask[top:top + crop, left:left + crop]
  valid = valid[top:top + crop, left:left + crop]
  image.set_shape([crop, crop, 3])
  mask.set_shape([crop, crop])
  valid.set_shape([crop, crop])
  return image, mask, valid
