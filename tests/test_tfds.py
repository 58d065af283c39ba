"""TFDS builders built into a temp dir: records read back equal the files (and the arrays)."""

import os
import re

import numpy as np
import pytest

from configs import default
import data_fixtures as fx
from data_pipeline import interfaces
from data_pipeline import providers
from data_pipeline import splits

tfds_builders = pytest.importorskip('data_pipeline.tfds_builders')


def _assert_same_splits(a, b):
  assert a.ids == b.ids and a.has_masks == b.has_masks
  np.testing.assert_array_equal(a.labels, b.labels)
  for i in range(len(a)):
    assert a.size(i) == b.size(i)
    np.testing.assert_array_equal(a.image(i), b.image(i))
    if a.has_masks:
      np.testing.assert_array_equal(a.mask(i), b.mask(i))


def _assert_same_batches(a, b, steps=2):
  for _ in range(steps):
    x, y = next(a), next(b)
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def _voc_config(root, tmp_path, source, **data):
  c = default.get_config()
  c.data.name, c.data.root, c.data.num_classes, c.data.source = 'voc12', root, 20, source
  c.data.crop_size, c.data.scale_range, c.data.long_side = 32, None, (24, 48)
  c.data.color_jitter, c.data.workers, c.data.threads = (0.3, 0.3, 0.3, 0.1), 1, 1
  c.data.tfds_dir = str(tmp_path / 'tfds')
  c.train.batch_size = 4
  for k, v in data.items():
    c.data[k] = v
  return c


def test_synthetic_records_equal_the_arrays(tmp_path):
  c = default.get_config()
  c.data.num_train, c.data.num_val, c.data.image_size, c.data.crop_size = 12, 4, 24, 24
  c.data.cache_dir, c.train.batch_size = str(tmp_path / 'cache'), 4
  arrays = providers.build(c, str(tmp_path))
  c.data.source = 'tfds'
  records = providers.build(c, str(tmp_path))
  assert records.class_names == arrays.class_names
  assert records.builder.data_dir.startswith(str(tmp_path / 'cache' / 'tfds'))
  for name in ('train', 'val'):
    _assert_same_splits(arrays.split(name), records.split(name))
  # PNG-encoded records decode to the same pixels: the same stream, batch for batch.
  _assert_same_batches(arrays.train_batches(1), records.train_batches(1))


def test_voc_builder_records_equal_the_files(tmp_path):
  root = str(tmp_path / 'voc')
  fx.voc_standard(root)
  files = providers.build(_voc_config(root, tmp_path, 'files'), str(tmp_path / 'w'))
  lines = []
  records = providers.RecordData(_voc_config(root, tmp_path, 'tfds'), str(tmp_path / 'w'),
                                 log=lines.append)
  assert any('building voc2012_wsss from PASCAL VOC 2012 in the standard layout' in line
             for line in lines)
  assert sorted(records.builder.info.splits.keys()) == ['test', 'train', 'val']
  assert isinstance(records, interfaces.Provider)
  assert isinstance(records.split('train'), interfaces.Split)
  for name in ('train', 'val', 'test'):
    _assert_same_splits(files.split(name), records.split(name))
  assert not records.split('test').has_masks
  _assert_same_batches(files.train_batches(2, 1, 2), records.train_batches(2, 1, 2))

  # Built once: a second provider reuses the records and the index.
  shard = records.split('train').filepaths[0]
  mtime = os.path.getmtime(shard)
  again = providers.RecordData(_voc_config(root, tmp_path, 'tfds'), str(tmp_path / 'w'),
                               log=lambda _: None)
  assert again.split('train').ids == files.split('train').ids
  assert os.path.getmtime(shard) == mtime
  builder = again.builder
  ds = builder.as_dataset(split='val')  # plain TFDS use
  example = next(iter(ds))
  assert example['image'].shape[-1] == 3 and example['mask'].shape[-1] == 1


def test_builder_corrupt_image_named_or_skipped(tmp_path):
  root = str(tmp_path / 'voc')
  ids = fx.voc_authors(root, dict(train_aug=3, validation=1))
  bad = os.path.join(root, 'VOC2012', 'train_aug', 'image', f"{ids['train_aug'][2]}.jpg")
  fx.corrupt_file(bad)
  with pytest.raises(splits.CorruptFileError, match=re.escape(bad)):
    providers.RecordData(_voc_config(root, tmp_path / 'a', 'tfds'), str(tmp_path / 'w'),
                         log=lambda _: None)
  lines = []
  records = providers.RecordData(_voc_config(root, tmp_path / 'b', 'tfds', skip_corrupt=True),
                                 str(tmp_path / 'w'), log=lines.append)
  assert records.split('train').ids == ids['train_aug'][:2]
  assert any('skipped 1 corrupt file(s) of 3' in line and bad in line for line in lines)
  assert 'test' not in records.builder.info.splits  # no test images in this tree


def test_coco_builder(tmp_path):
  pytest.importorskip('pycocotools')
  root = str(tmp_path / 'coco')
  fx.coco_distributed(root)
  c = _voc_config(root, tmp_path, 'tfds')
  c.data.name, c.data.num_classes, c.train.batch_size = 'coco14', 80, 2
  records = providers.RecordData(c, str(tmp_path / 'w'), log=lambda _: None)
  assert records.split('train').ids == ['COCO_train2014_000000000001',
                                        'COCO_train2014_000000000003']
  assert records.split('train').mask(0)[15, 15] == 17
  assert len(records.class_names) == 80
