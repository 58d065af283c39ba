"""tf.data input pipelines: the infinite, deterministic, resumable training stream and eval batching.

The training stream is a pure function of (seed, global step): the k-th example of the run is
looked up from a per-epoch permutation (`tf.random.experimental.index_shuffle`, seeded from
seed + epoch) and augmented with stateless ops seeded from (seed, epoch, example index). Hence

  * the stream is identical for a seed whatever tf.data's parallelism or autotuning does;
  * resuming at `start_step` is free: the stream simply starts at element start_step * batch;
  * with several processes, process p takes its slice of every global batch, and an example gets
    the same augmentation as it would in a single-process run.

Only numpy arrays leave this module (`as_numpy_iterator`); tensorflow stays on the host CPU.
"""

import os

# Before the first tensorflow import: keep TF's C++ log spam out of the training logs.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from data_pipeline import augment  # pylint: disable=g-import-not-at-top

try:
  # The accelerators belong to JAX: TF must neither claim GPU memory nor place ops there.
  tf.config.set_visible_devices([], 'GPU')
except RuntimeError:
  pass  # TF already initialised its devices elsewhere; nothing left to change.

# Domains of the key derivation, so the permutation and the augmentation draws never collide.
_PERMUTATION_DOMAIN = 0
_AUGMENT_DOMAIN = 1


def _check_arrays(images, masks, labels):
  """Validates the in-memory dataset; fails early with what to fix."""
  images, masks, labels = np.asarray(images), np.asarray(masks), np.asarray(labels)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'train_dataset: images must be uint8 [N, H, W, 3]; got {images.dtype} '
                     f'{images.shape}.')
  if masks.dtype != np.uint8 or masks.shape != images.shape[:3]:
    raise ValueError(f'train_dataset: masks must be uint8 [N, H, W] matching images '
                     f'{images.shape[:3]}; got {masks.dtype} {masks.shape}.')
  if labels.ndim != 2 or labels.shape[0] != images.shape[0]:
    raise ValueError(f'train_dataset: labels must be [N, C] with N = {images.shape[0]}; got '
                     f'{labels.shape}.')
  if images.shape[0] == 0:
    raise ValueError('train_dataset: the dataset is empty.')
  return images, masks, labels.astype(np.float32)


def train_dataset(images, masks, labels, *, batch_size, crop_size, scale_range=None,
                  long_side_range=None, flip=True, color_jitter=(0, 0, 0, 0), mean, std, seed,
                  shuffle_buffer=2048, start_step=0, drop_remainder=True, process_index=0,
                  process_count=1):
  """The infinite training stream of augmented batches for this process.

  Args:
    images: uint8 [N, H, W, 3] numpy array (all images the same size for now).
    masks: uint8 [N, H, W], 0 = background, 1..C classes, 255 ignore. Only for the fully
      supervised upper bound and for measuring seed quality, never a WSSS training label.
    labels: [N, C] image-level labels (float32 or uint8).
    batch_size: global batch size (over all processes).
    crop_size: side of the square random crop.
    scale_range: (lo, hi) random rescale factor (synthetic demo), or None.
    long_side_range: (lo, hi) random long-side length in pixels (VOC: (320, 640)), or None. At
      most one of scale_range and long_side_range; neither means no rescale.
    flip: random horizontal flips.
    color_jitter: (brightness, contrast, saturation, hue) strengths; 0 turns an op off.
    mean: per-channel mean of [0, 1] images.
    std: per-channel std of [0, 1] images.
    seed: python int; the whole stream is a pure function of it.
    shuffle_buffer: kept for the config's sake and checked > 0. In-memory arrays get a full
      random permutation per epoch (a buffer as large as the dataset, at no memory cost), so the
      buffer size only matters for the streaming readers of the real datasets.
    start_step: number of global batches to skip (resume); costs nothing.
    drop_remainder: passed to `batch`; the stream is infinite, so every batch is full and this
      only decides whether the batch dimension is static in the element spec.
    process_index: this process (`jax.process_index()`).
    process_count: number of processes (`jax.process_count()`).

  Returns:
    A `tf.data.Dataset` of dicts: image float32 [b, crop, crop, 3] normalised (0 on padding),
    mask int32 [b, crop, crop] (255 on padding), valid bool [b, crop, crop] (False on padding),
    label float32 [b, C], index int32 [b] (dataset index), b = batch_size // process_count.
  """
  images, masks, labels = _check_arrays(images, masks, labels)
  if batch_size <= 0 or batch_size % process_count:
    raise ValueError(f'train_dataset: the global batch_size={batch_size} must be a positive '
                     f'multiple of process_count={process_count}; change config.train.batch_size.')
  if not 0 <= process_index < process_count:
    raise ValueError(f'train_dataset: process_index={process_index} is not in '
                     f'[0, process_count={process_count}).')
  if scale_range is not None and long_side_range is not None:
    raise ValueError('train_dataset: set at most one of data.scale_range and '
                     'data.long_side_range.')
  if crop_size <= 0 or shuffle_buffer <= 0 or start_step < 0:
    raise ValueError(f'train_dataset: need crop_size > 0, shuffle_buffer > 0 and start_step >= 0; '
                     f'got {crop_size}, {shuffle_buffer}, {start_step}.')
  if len(color_jitter) != 4:
    raise ValueError(f'train_dataset: color_jitter must be (brightness, contrast, saturation, '
                     f'hue); got {color_jitter}.')

  n = images.shape[0]
  local_batch = batch_size // process_count
  images_t = tf.constant(images)
  masks_t = tf.constant(masks)
  labels_t = tf.constant(labels)
  base = tf.constant([int(seed), 0], tf.int64)
  fold_in = tf.random.experimental.stateless_fold_in
  perm_base = fold_in(base, _PERMUTATION_DOMAIN)
  aug_base = fold_in(base, _AUGMENT_DOMAIN)
  rescale = scale_range is not None or long_side_range is not None
  jitter = any(color_jitter)

  def element(k):
    # k counts this process's examples; g is the example's position in the global stream.
    g = (k // local_batch) * batch_size + process_index * local_batch + k % local_batch
    epoch, pos = g // n, g % n
    index = tf.random.experimental.index_shuffle(
        pos, fold_in(perm_base, epoch), tf.constant(n - 1, tf.int64))
    # Draws depend only on (seed, epoch, example): not on parallelism, batch or process layout.
    # Sub-seeds are split even for disabled ops so that toggling one op leaves the others alone.
    key = fold_in(fold_in(aug_base, epoch), index)
    k_rescale, k_flip, k_jitter, k_crop = augment.split_seed(key, 4)

    image = tf.gather(images_t, index)
    mask = tf.gather(masks_t, index)
    if rescale:
      image, mask = augment.random_rescale(image, mask, scale_range, k_rescale,
                                           long_side_range=long_side_range)
    if flip:
      image, mask = augment.random_flip(image, mask, k_flip)
    image = augment.to_float(image)
    if jitter:
      image = augment.color_jitter(image, *color_jitter, seed=k_jitter)
    # Normalise before padding (reference order), so padded pixels are 0 at the network input.
    image = augment.normalize(image, mean, std)
    image, mask, valid = augment.random_crop_pad(image, mask, crop_size, k_crop)
    return {
        'image': image,
        'mask': tf.cast(mask, tf.int32),
        'valid': valid,
        'label': tf.gather(labels_t, index),
        'index': tf.cast(index, tf.int32),
    }

  ds = tf.data.Dataset.counter(start=start_step * local_batch, dtype=tf.int64)
  ds = ds.map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(local_batch, drop_remainder=drop_remainder)
  ds = ds.prefetch(tf.data.AUTOTUNE)
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options)


def as_numpy_iterator(ds):
  """Iterator of dicts of numpy arrays over a tf.data dataset."""
  return iter(ds.as_numpy_iterator())


def train_iterator_from_config(data_config, images, masks, labels, batch_size, seed, start_step=0,
                               process_index=None, process_count=None):
  """`train_dataset` wired to `config.data`, as a numpy iterator.

  Args:
    data_config: `config.data` (fields crop_size, scale_range, flip, color_jitter, mean, std,
      shuffle_buffer; optional long_side_range).
    images: see `train_dataset`.
    masks: see `train_dataset`.
    labels: see `train_dataset`.
    batch_size: global batch size (`config.train.batch_size`).
    seed: python int.
    start_step: global batches already consumed (resume).
    process_index: defaults to `jax.process_index()`.
    process_count: defaults to `jax.process_count()`.

  Returns:
    An iterator of dicts of numpy arrays (see `train_dataset`).
  """
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  ds = train_dataset(
      images, masks, labels,
      batch_size=batch_size,
      crop_size=data_config.crop_size,
      scale_range=data_config.get('scale_range'),
      long_side_range=data_config.get('long_side_range'),
      flip=data_config.flip,
      color_jitter=tuple(data_config.color_jitter),
      mean=tuple(data_config.mean),
      std=tuple(data_config.std),
      seed=seed,
      shuffle_buffer=data_config.shuffle_buffer,
      start_step=start_step,
      process_index=process_index,
      process_count=process_count)
  return as_numpy_iterator(ds)


def eval_batches(images, batch_size):
  """Fixed-size numpy batches for inference, in dataset order.

  The last batch is padded with zero images, so every batch has the same shape and the jitted
  inference compiles once. All images have one size in the synthetic set; bucketing images of
  different sizes (with a valid-pixel mask) comes with the real dataset readers.

  Args:
    images: [N, H, W, 3] numpy array (returned as is, no normalisation).
    batch_size: examples per batch.

  Yields:
    (batch [batch_size, H, W, 3], n_valid): the first n_valid rows are real images.
  """
  images = np.asarray(images)
  if batch_size <= 0:
    raise ValueError(f'eval_batches: batch_size must be positive; got {batch_size}.')
  for start in range(0, images.shape[0], batch_size):
    batch = images[start:start + batch_size]
    n_valid = batch.shape[0]
    if n_valid < batch_size:
      pad = np.zeros((batch_size - n_valid,) + images.shape[1:], images.dtype)
      batch = np.concatenate([batch, pad])
    yield batch, n_valid
