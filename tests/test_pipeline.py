"""Tests of the tf.data training pipeline and the per-example augmentation (small arrays, fast)."""

import numpy as np
import pytest
import tensorflow as tf  # after data_pipeline: quiet, CPU

from data_pipeline import augment
from data_pipeline import pipeline

N, SIZE, C = 20, 48, 3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@pytest.fixture(scope='module')
def data():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (N, SIZE, SIZE, 3), dtype=np.uint8)
  masks = rng.integers(0, C + 1, (N, SIZE, SIZE), dtype=np.uint8)
  # Distinct rows, so a label identifies its example.
  labels = np.stack([np.unpackbits(np.uint8(i))[-C:] for i in range(N)]).astype(np.float32)
  labels += np.arange(N, dtype=np.float32)[:, None] * 10
  return images, masks, labels


def _take(ds, k):
  it = pipeline.as_numpy_iterator(ds)
  return [next(it) for _ in range(k)]


def _full_aug(data, **overrides):
  kwargs = dict(batch_size=8, crop_size=32, scale_range=(0.6, 1.4), flip=True,
                color_jitter=(0.3, 0.3, 0.3, 0.1), mean=IMAGENET_MEAN, std=IMAGENET_STD, seed=7)
  kwargs.update(overrides)
  return pipeline.train_dataset(*data, **kwargs)


def _assert_batches_equal(a, b):
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_batch_shapes_and_dtypes(data):
  batch = _take(_full_aug(data), 1)[0]
  expected = {
      'image': ((8, 32, 32, 3), np.float32),
      'mask': ((8, 32, 32), np.int32),
      'valid': ((8, 32, 32), np.bool_),
      'label': ((8, C), np.float32),
      'index': ((8,), np.int32),
  }
  assert set(batch) == set(expected)
  for key, (shape, dtype) in expected.items():
    assert batch[key].shape == shape, key
    assert batch[key].dtype == dtype, key
  assert np.all(np.isfinite(batch['image']))


def test_padding_is_ignore_and_invalid_exactly_where_image_is_zero(data):
  # 48 * 0.5 = 24 < crop 32: every crop holds the whole 24x24 image plus padding.
  ds = _full_aug(data, scale_range=(0.5, 0.5), color_jitter=(0, 0, 0, 0))
  offsets = set()
  for batch in _take(ds, 3):
    image, mask, valid = batch['image'], batch['mask'], batch['valid']
    padded = np.all(image == 0, axis=-1)  # normalised real pixels are never exactly 0 here
    np.testing.assert_array_equal(~valid, padded)
    np.testing.assert_array_equal(mask == 255, padded)  # the source masks hold no 255
    for v in valid:
      rows, cols = np.nonzero(v.any(1))[0], np.nonzero(v.any(0))[0]
      assert v.sum() == 24 * 24 and len(rows) == 24 and len(cols) == 24
      assert v[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()  # one contiguous box
      offsets.add((rows[0], cols[0]))
  assert len(offsets) > 1  # the image lands at random positions in the crop


def test_flip_keeps_image_and_mask_aligned():
  x = np.arange(SIZE)
  masks = np.broadcast_to((x + 1).astype(np.uint8), (N, SIZE, SIZE)).copy()
  images = np.zeros((N, SIZE, SIZE, 3), np.uint8)
  images[..., 0] = 5 * x  # the red channel encodes the same x position
  images[..., 1] = 100
  labels = np.zeros((N, C), np.float32)
  ds = pipeline.train_dataset(images, masks, labels, batch_size=10, crop_size=32, flip=True,
                              mean=(0, 0, 0), std=(1, 1, 1), seed=3)
  directions = []
  for batch in _take(ds, 4):
    mask, red = batch['mask'], batch['image'][..., 0]
    np.testing.assert_array_equal(np.round(red * 255), 5 * (mask - 1))
    steps = np.diff(mask, axis=2)
    assert np.all(np.abs(steps) == 1)  # a contiguous window, no resampling
    directions.extend(steps[:, 0, 0].tolist())
  assert 1 in directions and -1 in directions  # both flipped and unflipped examples occur


def test_labels_unchanged_and_match_index(data):
  _, _, labels = data
  ds = _full_aug(data, batch_size=4)
  batches = _take(ds, 10)  # two epochs of 20
  for batch in batches:
    np.testing.assert_array_equal(batch['label'], labels[batch['index']])
  epoch0 = np.concatenate([b['index'] for b in batches[:5]])
  epoch1 = np.concatenate([b['index'] for b in batches[5:]])
  assert sorted(epoch0) == list(range(N)) and sorted(epoch1) == list(range(N))
  assert not np.array_equal(epoch0, epoch1)  # reshuffled every epoch
  assert not np.array_equal(epoch0, np.arange(N))


def test_same_seed_same_batches_other_seed_differs(data):
  first = _take(_full_aug(data, seed=11), 5)
  _assert_batches_equal(first, _take(_full_aug(data, seed=11), 5))
  other = _take(_full_aug(data, seed=12), 5)
  assert not all(np.array_equal(a['image'], b['image']) for a, b in zip(first, other))
  assert not all(np.array_equal(a['index'], b['index']) for a, b in zip(first, other))


def test_stream_runs_without_the_autotuner(data):
  # tf.data's autotuner is a thread the iterator's destructor waits for; under XLA's load that
  # wait stalled the end of some networks' training for 22-27 s. Parallelism is fixed instead.
  assert _full_aug(data).options().autotune.enabled is False
  threaded = _full_aug(data, threads=1)
  assert threaded.options().threading.private_threadpool_size == 1
  _assert_batches_equal(_take(_full_aug(data), 3), _take(threaded, 3))  # the same stream


def test_start_step_resumes_exactly(data):
  fresh = _take(_full_aug(data), 6)
  resumed = _take(_full_aug(data, start_step=3), 3)
  _assert_batches_equal(fresh[3:], resumed)


def test_process_sharding_splits_the_global_batch(data):
  # Batch 10 divides N = 20, so no global batch straddles two epochs (one that does may hold an
  # example twice, once per epoch, and its halves need not be disjoint).
  global_batches = _take(_full_aug(data, batch_size=10), 4)
  shards = [_take(_full_aug(data, batch_size=10, process_index=p, process_count=2), 4)
            for p in range(2)]
  for step, whole in enumerate(global_batches):
    halves = [shards[p][step] for p in range(2)]
    assert halves[0]['image'].shape[0] == 5
    assert not set(halves[0]['index']) & set(halves[1]['index'])
    for key in whole:  # same examples, same augmentation, same order
      np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[key])


def test_batch_size_must_divide_by_process_count(data):
  with pytest.raises(ValueError, match='multiple of process_count'):
    _full_aug(data, batch_size=6, process_count=4)


def test_normalisation_applied(data):
  images, _, _ = data
  mean, std = (0.1, 0.5, 0.9), (0.5, 0.25, 2.0)
  ds = pipeline.train_dataset(*data, batch_size=5, crop_size=SIZE, flip=False, mean=mean,
                              std=std, seed=0)
  batch = _take(ds, 1)[0]
  expected = (images[batch['index']] / 255.0 - np.array(mean)) / np.array(std)
  np.testing.assert_allclose(batch['image'], expected, rtol=1e-5, atol=1e-5)
  assert batch['valid'].all()


def test_random_rescale_long_side():
  image = tf.zeros([30, 60, 3], tf.uint8)
  mask = tf.constant(np.tile(np.array([0, 1, 2, 255], np.uint8), (30, 15)))
  for i in range(5):
    out_image, out_mask = augment.random_rescale(image, mask, None, tf.constant([i, 0]),
                                                 long_side_range=(20, 40))
    h, w = out_image.shape[:2]
    assert 20 <= w <= 40 and h == round(30 * w / 60)
    assert out_image.dtype == tf.uint8 and out_mask.shape == (h, w)
    assert set(np.unique(out_mask.numpy())) <= {0, 1, 2, 255}  # nearest: no invented labels
  with pytest.raises(ValueError, match='exactly one'):
    augment.random_rescale(image, mask, (0.5, 1.0), tf.constant([0, 0]), long_side_range=(1, 2))


def test_color_jitter_stays_in_range():
  image = tf.constant(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
  seed = tf.constant([1, 2])
  out = augment.color_jitter(image, 0.3, 0.3, 0.3, 0.1, seed).numpy()
  assert out.min() >= 0.0 and out.max() <= 1.0
  assert not np.allclose(out, image.numpy() / 255.0)
  off = augment.color_jitter(image, 0, 0, 0, 0, seed).numpy()
  np.testing.assert_allclose(off, image.numpy() / 255.0, atol=1e-6)


def test_eval_batches_pads_the_last_batch():
  images = np.arange(7 * 2 * 2 * 3, dtype=np.uint8).reshape(7, 2, 2, 3)
  batches = list(pipeline.eval_batches(images, 3))
  assert [n for _, n in batches] == [3, 3, 1]
  assert all(b.shape == (3, 2, 2, 3) for b, _ in batches)
  np.testing.assert_array_equal(np.concatenate([b[:n] for b, n in batches]), images)
  assert not batches[-1][0][1:].any()


def test_train_iterator_from_config(data):
  from configs import default
  config = default.get_config()
  it = pipeline.train_iterator_from_config(config.data, *data, batch_size=4, seed=0,
                                           process_index=0, process_count=1)
  batch = next(it)
  crop = config.data.crop_size  # 64 > 48: the rescaled images are padded
  assert batch['image'].shape == (4, crop, crop, 3) and batch['mask'].shape == (4, crop, crop)
  assert not batch['valid'].all()


# --- file sources: images of several sizes, long-side rescale, palette masks ---------------------
_LUT = np.array([[0, 0, 0], [250, 20, 20], [20, 250, 20], [20, 20, 250], [250, 250, 20]],
                np.uint8)


def _stripes(h, w, offset):
  """A mask of vertical stripes (classes 1..4, no symmetry) and its image LUT[mask]."""
  mask = (1 + ((np.arange(w) + offset) // 7) % 4).astype(np.uint8)
  mask = np.broadcast_to(mask, (h, w)).copy()
  mask[:4] = 0
  return _LUT[mask], mask


def test_file_stream_masks_follow_scales_and_flips(tmp_path):
  from PIL import Image
  paths, mask_paths = [], []
  for k, (h, w) in enumerate([(30, 44), (44, 30), (36, 36), (26, 50)]):
    image, mask = _stripes(h, w, 3 * k)
    paths.append(str(tmp_path / f'{k}.png'))
    mask_paths.append(str(tmp_path / f'{k}_m.png'))
    Image.fromarray(image).save(paths[-1])
    Image.fromarray(mask).save(mask_paths[-1])
  labels = np.eye(4, dtype=np.float32)
  source = pipeline.file_source(paths, mask_paths, labels, num_classes=4)
  ds = pipeline.train_stream(source, batch_size=4, crop_size=32, long_side_range=(24, 64),
                             mean=(0, 0, 0), std=(1, 1, 1), seed=1, threads=1)
  checked, sizes = 0, set()
  for batch in _take(ds, 6):
    image, mask, valid = batch['image'], batch['mask'], batch['valid']
    assert image.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(batch['label'], labels[batch['index']])
    np.testing.assert_array_equal(mask[~valid], 255)  # padding: ignore, and 0 in the image
    np.testing.assert_array_equal(image[~valid], 0)
    for b in range(4):
      sizes.add(int(valid[b].sum()))
      m = mask[b]
      # Pixels whose 5x5 neighbourhood has one label: the image colour must be that label's.
      same = valid[b, 2:-2, 2:-2].copy()
      for dy in range(-2, 3):
        for dx in range(-2, 3):
          same &= m[2 + dy:30 + dy, 2 + dx:30 + dx] == m[2:-2, 2:-2]
      ys, xs = np.nonzero(same)
      got = np.round(image[b, ys + 2, xs + 2] * 255)
      np.testing.assert_allclose(got, _LUT[m[ys + 2, xs + 2]], atol=3)
      checked += len(ys)
  assert checked > 1000 and len(sizes) > 3  # scales vary


def test_decode_mask_grey_palette_and_foreign_palette(tmp_path):
  from PIL import Image

  from recurseed_jax import io_utils
  mask = np.array([[0, 1, 20], [255, 7, 15]], np.uint8)
  io_utils.save_palette_png(str(tmp_path / 'p.png'), mask)
  Image.fromarray(mask).save(str(tmp_path / 'g.png'))
  for name in ('p.png', 'g.png'):
    got = pipeline.decode_mask(tf.io.read_file(str(tmp_path / name))).numpy()
    np.testing.assert_array_equal(got, mask)
  grey_palette = Image.fromarray(mask, mode='L').convert('P')  # a palette that is not VOC's
  grey_palette.putpalette([v for i in range(256) for v in (i, i, i)])
  grey_palette.save(str(tmp_path / 'x.png'))
  with pytest.raises(tf.errors.InvalidArgumentError, match='VOC colour map'):
    pipeline.decode_mask(tf.io.read_file(str(tmp_path / 'x.png')))
