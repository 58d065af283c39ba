"""tf.data input pipelines: the infinite, deterministic, resumable training stream; eval batches.

The training stream is a pure function of (seed, global step): the k-th example of the run is
looked up from a per-epoch permutation (`tf.random.experimental.index_shuffle`, seeded from
seed + epoch) and augmented with stateless ops seeded from (seed, epoch, example index). Hence

  * the stream is identical for a seed whatever tf.data's parallelism or autotuning does;
  * resuming at `start_step` is free: the stream simply starts at element start_step * batch;
  * with several processes, process p takes its slice of every global batch, and an example gets
    the same augmentation as it would in a single-process run.

Examples come from a `Source`: in-memory arrays (the synthetic benchmark), image / mask files
(VOC, COCO) or TFDS records (data_pipeline/records.py). All three are random access, so they share
the permutation above; files and records holding the same pixels give the same batches.

Only numpy arrays leave this module (`as_numpy_iterator`); tensorflow stays on the host CPU.
"""

import dataclasses
import os
from typing import Callable

# Before the first tensorflow import: keep TF's C++ log spam out of the training logs.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np
import tensorflow as tf

from data_pipeline import augment
from recurseed_jax import host_info
from recurseed_jax import io_utils

try:
  # The accelerators belong to JAX: TF must neither claim GPU memory nor place ops there.
  tf.config.set_visible_devices([], 'GPU')
except RuntimeError:
  pass  # TF already initialised its devices elsewhere; nothing left to change.

# Domains of the key derivation, so the permutation and the augmentation draws never collide.
_PERMUTATION_DOMAIN = 0
_AUGMENT_DOMAIN = 1
# Batches the training stream prepares ahead of the step that takes them.
PREFETCH_BATCHES = 4


@dataclasses.dataclass
class Source:
  """Random access to training examples inside a tf.data graph.

  Attributes:
    labels: float32 [N, C] image-level labels (N = the number of examples).
    fetch: tf function index (int64 scalar) -> (image uint8 [H, W, 3], mask uint8 [H, W]).
  """
  labels: np.ndarray
  fetch: Callable


def array_source(images, masks, labels):
  """Examples held in memory as equal-sized uint8 arrays."""
  images, masks, labels = _check_arrays(images, masks, labels)
  images_t, masks_t = tf.constant(images), tf.constant(masks)
  return Source(labels, lambda index: (tf.gather(images_t, index), tf.gather(masks_t, index)))


def _voc_palette_index(rgb):
  """Colours of the VOC colour map -> label indices, and whether every colour was one of them.

  tf.io.decode_png expands a palette PNG to its colours; VOC masks use the VOC colour map, whose
  label -> colour map is a bijection: bit 3j + c of the label is bit 7 - j of channel c.
  """
  rgb = tf.cast(rgb, tf.int32)
  label = tf.zeros(tf.shape(rgb)[:2], tf.int32)
  for bit in range(8):
    j, ch = divmod(bit, 3)
    got = tf.bitwise.bitwise_and(tf.bitwise.right_shift(rgb[..., ch], 7 - j), 1)
    label += tf.bitwise.left_shift(got, bit)
  palette = tf.constant(io_utils.voc_palette(), tf.int32)
  ok = tf.reduce_all(tf.equal(tf.gather(palette, label), rgb))
  return tf.cast(label, tf.uint8), ok


def _png_header_ok(data):
  """Whether PNG bytes are what splits.read_mask accepts: 8-bit, or palette indices of any depth.

  tf.io.decode_png would scale 16-bit (and 1/2/4-bit grey) values into 8 bits and so turn label
  indices into other numbers without a word; such masks are refused instead.
  """
  signature = tf.equal(tf.strings.substr(data, 0, 8), b'\x89PNG\r\n\x1a\n')
  head = tf.io.decode_raw(tf.strings.substr(data, 24, 2), tf.uint8)
  return signature & ((head[0] == 8) | (head[1] == 3))


def decode_mask(data):
  """PNG bytes -> uint8 [H, W] label map (greyscale indices, or VOC-palette colours)."""
  header = tf.debugging.Assert(_png_header_ok(data), ['mask is not an 8-bit or palette PNG'])
  with tf.control_dependencies([header]):
    m = tf.io.decode_png(data, channels=0)

  def from_colours():
    label, ok = _voc_palette_index(m[..., :3])
    check = tf.debugging.Assert(ok, ['mask colours are not the VOC colour map'])
    with tf.control_dependencies([check]):
      return tf.identity(label)

  # 1 or 2 channels: grey (+ alpha) holds the indices; 3 or 4: a palette or colour image.
  return tf.cond(tf.shape(m)[-1] <= 2, lambda: m[..., 0], from_colours)


def decode_example(image_bytes, mask_bytes, num_classes):
  """Encoded image and mask -> (uint8 [H, W, 3], uint8 [H, W]), with the checks of splits.py.

  A failure raises tf's InvalidArgumentError; the providers turn it into an error naming the file
  by re-reading the failing batch with the split's Python readers (`checked_iterator`).
  """
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  mask = decode_mask(mask_bytes)
  ok_values = tf.reduce_all((mask <= num_classes) | (mask == augment.IGNORE_LABEL))
  checks = [
      tf.debugging.Assert(ok_values, ['mask values outside 0..C and 255']),
      tf.debugging.Assert(tf.reduce_all(tf.equal(tf.shape(image)[:2], tf.shape(mask))),
                          ['mask size differs from its image']),
  ]
  with tf.control_dependencies(checks):
    return tf.identity(image), tf.identity(mask)


def file_source(image_paths, mask_paths, labels, num_classes):
  """Examples read from image files (JPEG / PNG) and PNG masks, decoded in the graph."""
  if len(image_paths) != len(mask_paths) or len(image_paths) != len(labels):
    raise ValueError(f'file_source: {len(image_paths)} images, {len(mask_paths)} masks and '
                     f'{len(labels)} labels')
  # As bytes: file names that are not UTF-8 (surrogate-escaped str) keep their exact bytes.
  images_t = tf.constant([os.fsencode(p) for p in image_paths])
  masks_t = tf.constant([os.fsencode(p) for p in mask_paths])

  def fetch(index):
    return decode_example(tf.io.read_file(images_t[index]), tf.io.read_file(masks_t[index]),
                          num_classes)

  return Source(np.asarray(labels, np.float32), fetch)


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


def _check_args(n, batch_size, crop_size, scale_range, long_side_range, color_jitter,
                shuffle_buffer, start_step, process_index, process_count):
  if n == 0:
    raise ValueError('train_dataset: the dataset is empty.')
  if batch_size <= 0 or batch_size % process_count:
    raise ValueError(f'train_dataset: the global batch_size={batch_size} must be a positive '
                     f'multiple of process_count={process_count}; change config.train.batch_size.')
  if not 0 <= process_index < process_count:
    raise ValueError(f'train_dataset: process_index={process_index} is not in '
                     f'[0, process_count={process_count}).')
  if scale_range is not None and long_side_range is not None:
    raise ValueError('train_dataset: set at most one of data.scale_range and data.long_side.')
  if crop_size <= 0 or shuffle_buffer <= 0 or start_step < 0:
    raise ValueError(f'train_dataset: need crop_size > 0, shuffle_buffer > 0 and start_step >= 0; '
                     f'got {crop_size}, {shuffle_buffer}, {start_step}.')
  if len(color_jitter) != 4:
    raise ValueError(f'train_dataset: color_jitter must be (brightness, contrast, saturation, '
                     f'hue); got {color_jitter}.')


def _keys(seed):
  base = tf.constant([int(seed), 0], tf.int64)
  fold_in = tf.random.experimental.stateless_fold_in
  return fold_in(base, _PERMUTATION_DOMAIN), fold_in(base, _AUGMENT_DOMAIN)


def _example_index(k, n, batch_size, local_batch, process_index, perm_base):
  """(epoch, dataset index) of this process's k-th example of the stream."""
  # g is the example's position in the global stream (all processes).
  g = (k // local_batch) * batch_size + process_index * local_batch + k % local_batch
  epoch, pos = g // n, g % n
  index = tf.random.experimental.index_shuffle(
      pos, tf.random.experimental.stateless_fold_in(perm_base, epoch), tf.cast(n - 1, tf.int64))
  return epoch, index


def batch_indices(n, step, *, batch_size, seed, process_index=0, process_count=1):
  """Dataset indices of this process's rows of global batch `step` (to name a failing file)."""
  local_batch = batch_size // process_count
  perm_base, _ = _keys(seed)
  n = tf.constant(n, tf.int64)
  return [int(_example_index(tf.constant(k, tf.int64), n, batch_size, local_batch, process_index,
                             perm_base)[1])
          for k in range(step * local_batch, (step + 1) * local_batch)]


def train_stream(source, *, batch_size, crop_size, scale_range=None, long_side_range=None,
                 flip=True, color_jitter=(0, 0, 0, 0), mean, std, seed, shuffle_buffer=2048,
                 start_step=0, drop_remainder=True, process_index=0, process_count=1, threads=0):
  """The infinite training stream of augmented batches for this process, from any `Source`.

  Args:
    source: a `Source` (array_source, file_source, records.record_source).
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
    shuffle_buffer: kept for the config's sake and checked > 0. Every source is random access and
      gets a full random permutation per epoch, so no buffer is needed.
    start_step: number of global batches to skip (resume); costs nothing.
    drop_remainder: passed to `batch`; the stream is infinite, so every batch is full and this
      only decides whether the batch dimension is static in the element spec.
    process_index: this process (`jax.process_index()`).
    process_count: number of processes (`jax.process_count()`).
    threads: size of tf.data's thread pool for this stream; 0 = tf.data's default (all cores).

  Returns:
    A `tf.data.Dataset` of dicts: image float32 [b, crop, crop, 3] normalised (0 on padding),
    mask int32 [b, crop, crop] (255 on padding), valid bool [b, crop, crop] (False on padding),
    label float32 [b, C], index int32 [b] (dataset index), b = batch_size // process_count.
  """
  labels = np.asarray(source.labels, np.float32)
  n = labels.shape[0]
  _check_args(n, batch_size, crop_size, scale_range, long_side_range, color_jitter,
              shuffle_buffer, start_step, process_index, process_count)
  local_batch = batch_size // process_count
  labels_t = tf.constant(labels)
  perm_base, aug_base = _keys(seed)
  fold_in = tf.random.experimental.stateless_fold_in
  rescale = scale_range is not None or long_side_range is not None
  jitter = any(color_jitter)

  def element(k):
    epoch, index = _example_index(k, n, batch_size, local_batch, process_index, perm_base)
    # Draws depend only on (seed, epoch, example): not on parallelism, batch or process layout.
    # Sub-seeds are split even for disabled ops so that toggling one op leaves the others alone.
    key = fold_in(fold_in(aug_base, epoch), index)
    k_rescale, k_flip, k_jitter, k_crop = augment.split_seed(key, 4)

    image, mask = source.fetch(index)
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

  # Fixed parallelism and prefetch depth, and tf.data's autotuner off: the autotuner is a thread
  # that the iterator's destructor waits for, and under XLA's load on a 2-core machine that wait
  # took 22-27 s at the end of a network's training (py-spy: RootDataset::Iterator::~Iterator).
  # Prefetching 4 batches matched the autotuner's throughput (bench/input_pipeline.py, 2 cores).
  parallel = int(threads) if threads else host_info.cores()
  ds = tf.data.Dataset.counter(start=start_step * local_batch, dtype=tf.int64)
  ds = ds.map(element, num_parallel_calls=parallel, deterministic=True)
  ds = ds.batch(local_batch, drop_remainder=drop_remainder)
  ds = ds.prefetch(PREFETCH_BATCHES)
  options = tf.data.Options()
  options.deterministic = True
  options.autotune.enabled = False
  if threads:
    options.threading.private_threadpool_size = int(threads)
  return ds.with_options(options)


def train_dataset(images, masks, labels, **kwargs):
  """`train_stream` over in-memory arrays.

  Args:
    images: uint8 [N, H, W, 3] numpy array (all images the same size).
    masks: uint8 [N, H, W], 0 = background, 1..C classes, 255 ignore. Only for the fully
      supervised upper bound and for measuring seed quality, never a WSSS training label.
    labels: [N, C] image-level labels (float32 or uint8).
    **kwargs: `train_stream`'s keyword arguments.

  Returns:
    The `tf.data.Dataset` of `train_stream`.
  """
  return train_stream(array_source(images, masks, labels), **kwargs)


def as_numpy_iterator(ds):
  """Iterator of dicts of numpy arrays over a tf.data dataset."""
  return iter(ds.as_numpy_iterator())


def checked_iterator(ds, start_step, diagnose):
  """Numpy batches; a tf error in batch s calls `diagnose(s)`, which raises the named error.

  With deterministic ordering, an example that fails to decode fails exactly the batch that holds
  it, so its step says which files to re-read (in Python, with messages naming them).
  """
  it = as_numpy_iterator(ds)
  step = start_step
  while True:
    try:
      batch = next(it)
    except tf.errors.OpError as e:
      diagnose(step)
      raise ValueError(f'training input failed in batch {step}: {e.message.strip()}') from e
    yield batch
    step += 1


def stream_kwargs(data_config):
  """`train_stream`'s augmentation keywords from `config.data`."""
  long_side, scale_range = data_config.long_side, data_config.scale_range
  return dict(
      crop_size=data_config.crop_size,
      scale_range=tuple(scale_range) if scale_range is not None else None,
      long_side_range=tuple(long_side) if long_side is not None else None,
      flip=data_config.flip,
      color_jitter=tuple(data_config.color_jitter),
      mean=tuple(data_config.mean),
      std=tuple(data_config.std),
      shuffle_buffer=data_config.shuffle_buffer,
      threads=data_config.threads)


def train_iterator_from_config(data_config, images, masks, labels, batch_size, seed, start_step=0,
                               process_index=None, process_count=None):
  """`train_dataset` wired to `config.data`, as a numpy iterator.

  Args:
    data_config: `config.data` (fields crop_size, scale_range or long_side, flip, color_jitter,
      mean, std, shuffle_buffer, threads).
    images: see `train_dataset`.
    masks: see `train_dataset`.
    labels: see `train_dataset`.
    batch_size: global batch size (`config.train.batch_size`).
    seed: python int.
    start_step: global batches already consumed (resume).
    process_index: defaults to `jax.process_index()`.
    process_count: defaults to `jax.process_count()`.

  Returns:
    An iterator of dicts of numpy arrays (see `train_stream`).
  """
  if process_index is None or process_count is None:
    import jax
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  ds = train_dataset(images, masks, labels, batch_size=batch_size, seed=seed,
                     start_step=start_step, process_index=process_index,
                     process_count=process_count, **stream_kwargs(data_config))
  return as_numpy_iterator(ds)


def eval_batches(images, batch_size):
  """Fixed-size numpy batches for inference, in dataset order.

  The last batch is padded with zero images, so every batch has the same shape and the jitted
  inference compiles once. For images of different sizes, see recurseed_jax/infer.py's buckets.

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
