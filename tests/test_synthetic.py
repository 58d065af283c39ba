"""Tests for data_pipeline.synthetic: determinism, label / mask consistency, markers, caching."""

import os

import ml_collections
import numpy as np
import pytest

from data_pipeline import synthetic

K = 5
SIZE = 48
NUM = 40


@pytest.fixture(scope='module')
def sample():
  return synthetic.generate(NUM, K, SIZE, seed=3)


def _data_config(cache_dir, **overrides):
  c = ml_collections.ConfigDict(dict(num_classes=K, image_size=16, num_train=6, num_val=3,
                                     seed=11, cache_dir=str(cache_dir)))
  for key, value in overrides.items():
    c[key] = value
  return c


def test_generate_deterministic_per_seed(sample):
  again = synthetic.generate(NUM, K, SIZE, seed=3)
  other = synthetic.generate(NUM, K, SIZE, seed=4)
  for key in ('images', 'masks', 'labels'):
    np.testing.assert_array_equal(sample[key], again[key])
  assert not np.array_equal(sample['images'], other['images'])
  assert not np.array_equal(sample['masks'], other['masks'])


def test_shapes_dtypes_and_mask_values(sample):
  assert sample['images'].shape == (NUM, SIZE, SIZE, 3) and sample['images'].dtype == np.uint8
  assert sample['masks'].shape == (NUM, SIZE, SIZE) and sample['masks'].dtype == np.uint8
  assert sample['labels'].shape == (NUM, K) and sample['labels'].dtype == np.uint8
  assert set(np.unique(sample['masks']).tolist()) <= set(range(K + 1))
  assert set(np.unique(sample['labels']).tolist()) <= {0, 1}
  # Every class and some background occur across the sample.
  assert set(np.unique(sample['masks']).tolist()) == set(range(K + 1))


def test_labels_equal_classes_in_mask(sample):
  for i in range(NUM):
    in_mask = {int(v) - 1 for v in np.unique(sample['masks'][i]) if v > 0}
    labelled = set(np.flatnonzero(sample['labels'][i]).tolist())
    assert labelled == in_mask, (i, labelled, in_mask)
    assert labelled, f'image {i} has no object'
    for c in labelled:  # every labelled class has a sizeable body
      assert (sample['masks'][i] == c + 1).sum() >= 0.02 * SIZE * SIZE, (i, c)


def test_every_object_has_its_marker(sample):
  for i in range(NUM):
    image, mask = sample['images'][i], sample['masks'][i]
    for c in np.flatnonzero(sample['labels'][i]):
      pixels = image[mask == c + 1].astype(np.int64)
      col_a, col_b = (np.array(v) for v in synthetic._MARKER_COLOURS[c % len(
          synthetic._MARKER_COLOURS)])
      hits = np.all(pixels == col_a, axis=-1) | np.all(pixels == col_b, axis=-1)
      assert hits.any(), f'image {i}: class {c} has no marker pixel inside its mask'


def test_prepare_writes_once_and_loads(tmp_path):
  cfg = _data_config(tmp_path / 'cache')
  root = synthetic.prepare(cfg, str(tmp_path / 'work'))
  assert root == synthetic.dataset_dir(cfg, str(tmp_path / 'work'))
  assert os.path.dirname(root) == str(tmp_path / 'cache')
  files = [os.path.join(root, n) for n in ('train.npz', 'val.npz', 'meta.json')]
  mtimes = [os.stat(f).st_mtime_ns for f in files]
  assert synthetic.prepare(cfg, str(tmp_path / 'work')) == root
  assert [os.stat(f).st_mtime_ns for f in files] == mtimes, 'prepare rewrote a cached set'
  assert not [n for n in os.listdir(root) if '.tmp' in n]

  train = synthetic.load_split(root, 'train')
  val = synthetic.load_split(root, 'val')
  assert train['images'].shape == (6, 16, 16, 3) and len(val['images']) == 3
  assert train['ids'] == [f'train_{i:05d}' for i in range(6)]
  assert val['ids'][0] == 'val_00000'
  ref = synthetic.generate(6, K, 16, seed=11)  # the set is a pure function of its parameters
  for key in ('images', 'masks', 'labels'):
    np.testing.assert_array_equal(train[key], ref[key])
  assert not np.array_equal(val['images'][:3], train['images'][:3])


def test_cache_dir_defaults_to_workdir(tmp_path):
  root = synthetic.dataset_dir(_data_config(''), str(tmp_path))
  assert os.path.dirname(root) == os.path.join(str(tmp_path), 'data')


@pytest.mark.parametrize('key,value', [('num_classes', 4), ('image_size', 24), ('num_train', 7),
                                       ('num_val', 4), ('seed', 12)])
def test_folder_name_changes_with_parameters(tmp_path, key, value):
  base = synthetic.dataset_dir(_data_config(tmp_path), 'unused')
  assert synthetic.dataset_dir(_data_config(tmp_path), 'unused') == base
  assert synthetic.dataset_dir(_data_config(tmp_path, **{key: value}), 'unused') != base


def test_load_split_missing_raises_naming_path(tmp_path):
  root = synthetic.prepare(_data_config(tmp_path), str(tmp_path))
  path = os.path.join(root, 'test.npz')
  with pytest.raises(FileNotFoundError) as info:
    synthetic.load_split(root, 'test')
  assert path in str(info.value)
  with pytest.raises(FileNotFoundError, match='nowhere'):
    synthetic.load_split(str(tmp_path / 'nowhere'), 'train')


def test_provider_batches_shard_by_process(tmp_path):
  from configs import default
  from data_pipeline import providers
  cfg = default.get_config()
  cfg.data.num_train, cfg.data.num_val, cfg.data.image_size, cfg.data.crop_size = 8, 2, 16, 16
  cfg.data.cache_dir, cfg.train.batch_size = str(tmp_path), 4
  provider = providers.build(cfg, str(tmp_path))
  whole = next(provider.train_batches(3))
  halves = [next(provider.train_batches(3, p, 2)) for p in range(2)]
  assert halves[0]['image'].shape == (2, 16, 16, 3)
  for key in whole:
    np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[key])
  split = provider.split('train')
  assert len(split) == 8 and split.ids[0] == 'train_00000' and split.has_masks
