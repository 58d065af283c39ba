"""PASCAL VOC readers on generated fixture trees: both layouts, labels, bad input, the stream."""

import os
import re
import shutil

import numpy as np
import pytest

from configs import default
from configs import voc12_rs50
import data_fixtures as fx
from data_pipeline import interfaces
from data_pipeline import providers
from data_pipeline import registry
from data_pipeline import splits
from data_pipeline import voc
from recurseed_jax import config_lib


@pytest.fixture(scope='module')
def trees(tmp_path_factory):
  root = tmp_path_factory.mktemp('voc')
  return dict(authors=(str(root / 'a'), fx.voc_authors(str(root / 'a'))),
              standard=(str(root / 's'), fx.voc_standard(str(root / 's'))))


def _config(root, **data):
  c = default.get_config()
  c.data.name, c.data.root, c.data.num_classes = 'voc12', root, 20
  c.data.crop_size, c.data.scale_range, c.data.long_side = 32, None, (24, 48)
  c.data.color_jitter, c.data.workers, c.data.threads = (0.3, 0.3, 0.3, 0.1), 1, 1
  c.train.batch_size = 4
  for k, v in data.items():
    c.data[k] = v
  return c


def _classes_in(mask):
  return {int(v) - 1 for v in np.unique(mask) if 0 < v < 255}


def _check_split(split, ids, with_masks):
  assert split.ids == ids and len(split) == len(ids)
  assert split.labels.shape == (len(ids), voc.NUM_CLASSES) and split.labels.dtype == np.float32
  assert split.has_masks == with_masks
  for i in range(len(split)):
    image = split.image(i)
    assert image.dtype == np.uint8 and image.shape == split.size(i) + (3,)
    if with_masks:
      mask = split.mask(i)
      assert mask.shape == split.size(i)
      assert _classes_in(mask) == set(np.flatnonzero(split.labels[i]).tolist())


@pytest.mark.parametrize('layout', ['authors', 'standard'])
def test_layout_detected_and_splits_read(trees, tmp_path, layout):
  root, ids = trees[layout]
  lines = []
  provider = providers.FileData(_config(root), str(tmp_path), log=lines.append)
  assert voc.LAYOUTS[provider.layout.kind] in lines[0]  # says which layout it found
  assert provider.layout.kind == (voc.AUTHORS if layout == 'authors' else voc.STANDARD)
  assert provider.class_names == list(voc.CLASS_NAMES)
  assert isinstance(provider, interfaces.Provider)
  expected = (dict(train=ids['train_aug'], val=ids['validation'], test=ids['test'])
              if layout == 'authors' else ids)
  for name in ('train', 'val', 'test'):
    _check_split(provider.split(name), expected[name], with_masks=name != 'test')
  assert not provider.split('test').labels.any()


def test_detect_from_any_folder_level(trees):
  root, _ = trees['standard']
  base = os.path.join(root, 'VOCdevkit', 'VOC2012')
  for start in (root, os.path.join(root, 'VOCdevkit'), base):
    assert voc.detect(start) == voc.Layout(voc.STANDARD, base)
  root, _ = trees['authors']
  assert voc.detect(os.path.join(root, 'VOC2012')).base == os.path.join(root, 'VOC2012')


def test_palette_val_masks_read_as_indices(trees):
  root, ids = trees['standard']
  split = voc.load_split(voc.detect(root), 'val')
  for i in range(len(split)):
    np.testing.assert_array_equal(split.mask(i), fx.example(4 + i, 20)[1])  # 4 train first


def test_train_aug_derived_without_list_and_labels_from_masks(tmp_path):
  fx.voc_standard(str(tmp_path / 's'), aug_list=False)
  layout = voc.detect(str(tmp_path / 's'))
  shutil.rmtree(os.path.join(layout.base, 'Annotations'))  # labels must come from the masks
  split = voc.load_split(layout, 'train', cache_dir=str(tmp_path / 'cache'))
  assert split.ids == [f'2008_{i:06d}' for i in range(4)]  # SegmentationClassAug less val
  for i in range(len(split)):
    assert _classes_in(split.mask(i)) == set(np.flatnonzero(split.labels[i]).tolist())
  assert any(n.startswith('labels-voc12-train') for n in os.listdir(tmp_path / 'cache'))
  again = voc.load_split(layout, 'train', cache_dir=str(tmp_path / 'cache'))
  np.testing.assert_array_equal(again.labels, split.labels)


def test_authors_labels_from_masks_when_no_xml(tmp_path):
  ids = fx.voc_authors(str(tmp_path), dict(train_aug=3, validation=1), xml=False)
  split = voc.load_split(voc.detect(str(tmp_path)), 'train')
  _check_split(split, ids['train_aug'], with_masks=True)
  assert split.labels.any(axis=1).all()


def test_registry_class_count_is_the_readers():
  assert registry.DATASETS['voc12'] == voc.NUM_CLASSES == len(voc.CLASS_NAMES) == 20


def test_missing_root_names_path_and_layouts(tmp_path):
  for root in (str(tmp_path / 'nowhere'), str(tmp_path)):
    with pytest.raises(FileNotFoundError) as info:
      voc.detect(root)
    msg = str(info.value)
    assert root in msg and "authors' layout" in msg and 'standard layout' in msg
  with pytest.raises(FileNotFoundError, match='config.data.root is empty'):
    voc.detect('')


def test_missing_split_names_path(tmp_path):
  fx.voc_authors(str(tmp_path / 'a'), dict(train_aug=2, validation=1))  # no test folder
  with pytest.raises(FileNotFoundError) as info:
    voc.load_split(voc.detect(str(tmp_path / 'a')), 'test')
  assert os.path.join(str(tmp_path / 'a'), 'VOC2012', 'test') in str(info.value)
  fx.voc_standard(str(tmp_path / 's'), aug_list=False)
  base = voc.detect(str(tmp_path / 's')).base
  shutil.rmtree(os.path.join(base, 'SegmentationClassAug'))
  aug = os.path.join(base, 'SegmentationClassAug')
  with pytest.raises(FileNotFoundError, match=re.escape(aug)):
    voc.load_split(voc.detect(str(tmp_path / 's')), 'train')
  with pytest.raises(ValueError, match="unknown VOC split 'bogus'"):
    voc.load_split(voc.detect(str(tmp_path / 's')), 'bogus')


def test_empty_split_is_an_error(tmp_path):
  fx.voc_authors(str(tmp_path), dict(train_aug=2, validation=1))
  for name in os.listdir(tmp_path / 'VOC2012' / 'validation' / 'image'):
    os.remove(tmp_path / 'VOC2012' / 'validation' / 'image' / name)
  with pytest.raises(ValueError, match='VOC val split is empty'):
    voc.load_split(voc.detect(str(tmp_path)), 'val')


def test_corrupt_image_named_or_skipped(tmp_path):
  ids = fx.voc_authors(str(tmp_path / 'a'), dict(train_aug=4, validation=1))
  bad = os.path.join(str(tmp_path / 'a'), 'VOC2012', 'train_aug', 'image',
                     f"{ids['train_aug'][1]}.jpg")
  fx.corrupt_file(bad)
  split = voc.load_split(voc.detect(str(tmp_path / 'a')), 'train')
  with pytest.raises(splits.CorruptFileError, match=re.escape(bad)):
    split.image(1)
  with pytest.raises(splits.CorruptFileError, match='skip_corrupt'):
    split.size(1)
  with pytest.raises(splits.CorruptFileError, match=re.escape(bad)):  # eager train split
    providers.FileData(_config(str(tmp_path / 'a')), str(tmp_path / 'w1'), log=lambda _: None
                       ).train_batches().__next__()
  lines = []
  provider = providers.FileData(_config(str(tmp_path / 'a'), skip_corrupt=True),
                                str(tmp_path / 'w2'), log=lines.append)
  assert provider.split('train').ids == [i for k, i in enumerate(ids['train_aug']) if k != 1]
  assert any('skipped 1 corrupt file(s) of 4' in line and bad in line for line in lines)
  assert next(provider.train_batches())['image'].shape == (4, 32, 32, 3)


@pytest.mark.parametrize('problem', ['values', 'size'])
def test_bad_mask_is_an_error_naming_the_file(tmp_path, problem):
  ids = fx.voc_authors(str(tmp_path), dict(train_aug=3, validation=1))
  path = os.path.join(str(tmp_path), 'VOC2012', 'train_aug', 'mask', f"{ids['train_aug'][0]}.png")
  mask = fx.example(0, 20)[1]
  if problem == 'values':
    mask[0, 0] = 21  # VOC has classes 1..20
    needle = 'outside 0..20'
  else:
    mask = mask[:-2]
    needle = 'but its image'
  fx.write_grey_png(path, mask)
  # Labels come from the XML, so the split opens; reading the mask fails, naming it.
  provider = providers.FileData(_config(str(tmp_path)), str(tmp_path / 'w'), log=lambda _: None)
  with pytest.raises(ValueError, match=needle) as info:
    provider.split('train').mask(0)
  assert path in str(info.value)
  # The training stream decodes in tf.data, and its error names the file too.
  with pytest.raises(ValueError, match=needle) as info:
    next(provider.train_batches())  # batch 4 > 3 images: the first batch holds every image
  assert path in str(info.value)


def test_file_stream_deterministic_resumable_and_sharded(trees, tmp_path):
  root, _ = trees['standard']
  provider = providers.FileData(_config(root), str(tmp_path), log=lambda _: None)
  train = provider.split('train')
  it = provider.train_batches()
  first = [next(it) for _ in range(3)]
  for b in first:
    assert b['image'].shape == (4, 32, 32, 3) and b['mask'].shape == (4, 32, 32)
    assert b['label'].shape == (4, 20)
    np.testing.assert_array_equal(b['label'], train.labels[b['index']])
    np.testing.assert_array_equal(b['mask'][~b['valid']], 255)
    np.testing.assert_array_equal(b['image'][~b['valid']], 0)
    assert set(np.unique(b['mask'])) <= {0, 255} | {c + 1 for c in range(20)}
  again = provider.train_batches(start_step=1)
  for b in first[1:]:
    resumed = next(again)
    for key in b:
      np.testing.assert_array_equal(b[key], resumed[key])
  halves = [next(provider.train_batches(0, p, 2)) for p in range(2)]
  for key in first[0]:
    np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), first[0][key])


def test_paper_config_is_valid_and_documented():
  cfg = voc12_rs50.get_config()
  assert cfg.data.name == 'voc12' and cfg.data.long_side == (320, 640)
  assert cfg.data.crop_size == 512 and cfg.model.stage_sizes == (3, 4, 6, 3)
  assert cfg.train.steps == -(-20 * 10582 // cfg.train.batch_size)
  with pytest.raises(ValueError, match='config.data.root'):
    config_lib.validate(cfg)
  cfg.data.root = '/data/VOC2012'
  cfg.model.init = 'scratch'  # the weights file is the user's
  config_lib.validate(cfg)
  assert 'python launch.py --config configs/voc12_rs50.py' in voc12_rs50.__doc__
  cfg.train.batch_size = 16  # the schedule stays 20 epochs
  assert cfg.train.steps == -(-20 * 10582 // 16)


@pytest.mark.parametrize('key,value,needle', [
    ('name', 'imagenet', 'data.name'),
    ('source', 'lmdb', 'data.source'),
    ('long_side', (640, 320), 'data.long_side'),
    ('num_classes', 21, 'data.num_classes'),
    ('color_jitter', (0.3, 0.3, 0.3, 0.7), 'data.color_jitter'),
    ('workers', -1, 'data.workers'),
])
def test_bad_data_config_names_its_key(key, value, needle):
  cfg = _config('/data/VOC2012')
  cfg.data[key] = value
  with pytest.raises(ValueError, match=re.escape(needle)):
    config_lib.validate(cfg)
