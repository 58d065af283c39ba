"""Hostile input files: each ends in an error naming the file, or (data.skip_corrupt) a counted
skip.

Every mask and image case is read both ways a run reads it, by the split's Python readers (seeds,
evaluation, labels from masks) and by the tf.data training stream, and both must agree.
Elsewhere: a JPEG cut to 60 bytes (tests/test_voc.py::test_corrupt_image_named_or_skipped), mask
values outside {0..C, 255} and a mask of another size than its image
(tests/test_voc.py::test_bad_mask_is_an_error_naming_the_file).
"""

import json
import os

import numpy as np
import pytest

import data_fixtures as fx
from data_pipeline import coco
from data_pipeline import coco_prepare
from data_pipeline import image_ids
from data_pipeline import providers
from data_pipeline import splits
from data_pipeline import voc
from recurseed_jax import io_utils
import reference


def _provider(root, workdir, log=None, **data):
  cfg = reference.default_config(**{
      'data.name': 'voc12', 'data.root': root, 'data.num_classes': 20, 'data.crop_size': 32,
      'data.scale_range': None, 'data.long_side': (24, 48), 'data.workers': 1,
      'data.threads': 1, 'train.batch_size': 4})  # 4 images, batch 4: batch 0 holds them all
  for key, value in data.items():
    cfg.data[key] = value
  return providers.FileData(cfg, workdir, log=log or (lambda _: None))


@pytest.fixture
def tree(tmp_path):
  """An authors'-layout VOC tree: 4 training images, 1 val; returns (root, train ids, train dir)."""
  root = str(tmp_path / 'voc')
  ids = fx.voc_authors(root, dict(train_aug=4, validation=1))['train_aug']
  return root, ids, os.path.join(root, 'VOC2012', 'train_aug')


def _both_readers_raise(provider, index, error, needle, path):
  """split.mask / split.image and the training stream raise `error` naming `path`."""
  split = provider.split('train')
  with pytest.raises(error, match=needle) as info:
    split.check(index)
  assert path in str(info.value)
  with pytest.raises(error, match=needle) as info:
    next(provider.train_batches())
  assert path in str(info.value)


def _counted_skip(root, workdir, ids, index, path):
  lines = []
  provider = _provider(root, workdir, log=lines.append, skip_corrupt=True)
  assert provider.split('train').ids == [i for k, i in enumerate(ids) if k != index]
  assert any('skipped 1 corrupt file(s) of 4' in line and path in line for line in lines), lines
  assert next(provider.train_batches())['image'].shape == (4, 32, 32, 3)


# (kind, error, message fragment, skipped with data.skip_corrupt)
MASKS = [
    ('empty', splits.CorruptFileError, 'is not a PNG', True),
    ('truncated', splits.CorruptFileError, 'cannot decode mask', True),
    ('16bit', splits.BadFileError, 'is a 16-bit PNG', False),
    ('rgb-unknown', splits.BadFileError, r'colour \(20, 40, 60\).*not in the VOC colour map',
     False),
    ('palette-unknown', splits.BadFileError, r'colour \(20, 40, 60\)', False),
]


@pytest.mark.parametrize('kind,error,needle,skippable', MASKS, ids=[m[0] for m in MASKS])
def test_hostile_mask(tree, tmp_path, kind, error, needle, skippable):
  root, ids, folder = tree
  path = os.path.join(folder, 'mask', f'{ids[1]}.png')
  fx.write_hostile_mask(path, fx.example(1, voc.NUM_CLASSES)[1], kind)
  _both_readers_raise(_provider(root, str(tmp_path / 'w')), 1, error, needle, path)
  if skippable:
    _counted_skip(root, str(tmp_path / 'w2'), ids, 1, path)
  else:  # decodes, but is no label map of this dataset: skip_corrupt does not hide it
    with pytest.raises(error, match=needle):
      _provider(root, str(tmp_path / 'w2'), skip_corrupt=True)


def test_rgb_mask_in_voc_colours_reads_the_same_both_ways(tree, tmp_path):
  root, ids, folder = tree
  mask = fx.example(1, voc.NUM_CLASSES)[1]
  fx.write_hostile_mask(os.path.join(folder, 'mask', f'{ids[1]}.png'), mask, 'rgb-voc')
  provider = _provider(root, str(tmp_path / 'w'))
  np.testing.assert_array_equal(provider.split('train').mask(1), mask)
  batch = next(provider.train_batches())  # decoded by colour in tf, checked there too
  assert set(np.unique(batch['mask'])) <= {0, 255} | set(range(1, 21))


@pytest.mark.parametrize('keep', [0, 'half'], ids=['zero-byte', 'truncated'])
def test_hostile_image(tree, tmp_path, keep):
  root, ids, folder = tree
  path = os.path.join(folder, 'image', f'{ids[2]}.jpg')
  fx.corrupt_file(path, keep=os.path.getsize(path) // 2 if keep == 'half' else keep)
  _both_readers_raise(_provider(root, str(tmp_path / 'w')), 2, splits.CorruptFileError,
                      'cannot decode image', path)
  _counted_skip(root, str(tmp_path / 'w2'), ids, 2, path)


def test_voc_xml_without_objects(tree, tmp_path):
  root, ids, folder = tree
  path = os.path.join(folder, 'xml', f'{ids[0]}.xml')
  fx.write_xml(path, [])
  with pytest.raises(splits.BadFileError, match='lists no <object>') as info:
    _provider(root, str(tmp_path / 'w'))
  assert path in str(info.value)


def test_coco_xml_without_objects_is_a_counted_skip(tmp_path):
  ids = fx.coco_authors(str(tmp_path))['train']
  fx.write_xml(str(tmp_path / 'COCO2014' / 'train' / 'xml' / f'{ids[0]}.xml'), [])
  lines = []
  split = coco.load_split(coco.detect(str(tmp_path)), 'train', workers=1, log=lines.append)
  assert split.ids == ids[1:]  # as in the WSSS literature: images without a class are left out
  assert any('left out 1 of 4 images without any class' in line for line in lines), lines


@pytest.fixture
def coco_json(tmp_path):
  pytest.importorskip('pycocotools')
  root = str(tmp_path / 'coco')
  fx.coco_distributed(root)
  path = os.path.join(root, 'annotations', 'instances_train2014.json')
  with open(path) as f:
    data = json.load(f)

  def write(*anns):
    data['annotations'].extend(anns)
    with open(path, 'w') as f:
      json.dump(data, f)
    return root, path
  return write


def test_coco_polygon_outside_the_image_is_counted(coco_json, tmp_path):
  partly = dict(id=90, image_id=3, category_id=1, iscrowd=0,  # image 3 is 36 x 36
                segmentation=[[20, 20, 50, 20, 50, 30, 20, 30]])
  wholly = dict(id=91, image_id=3, category_id=2, iscrowd=0,
                segmentation=[[40, 40, 60, 40, 60, 60]])
  root, path = coco_json(partly, wholly)
  lines = []
  labels = coco_prepare.prepare_split(root, 'train2014', str(tmp_path / 'm'), workers=0,
                                      class_names=coco.CLASS_NAMES, log=lines.append)
  note = [line for line in lines if 'reach out of their image' in line]
  assert len(note) == 1 and path in note[0] and '1 polygon(s)' in note[0], lines
  assert '1 lie wholly outside' in note[0] and '[90, 91]' in note[0]
  with open(labels) as f:  # the clipped person is drawn; the bicycle outside is not
    assert json.load(f)['COCO_train2014_000000000003'] == [0, 79]
  mask = io_utils.load_mask_png(
      str(tmp_path / 'm' / 'train2014' / 'COCO_train2014_000000000003.png'))
  assert (mask[20:30, 20:36] == 1).all()


@pytest.mark.parametrize('ann,needle', [
    (dict(segmentation=[[1, 2, 3, 4, 5]]), 'a polygon of 5 numbers'),
    (dict(segmentation=[[1, 2, 3, 4]]), 'a polygon of 4 numbers'),  # pycocotools: a box
    (dict(category_id=12), 'category_id 12'),  # COCO has no category 12
])
def test_coco_malformed_annotation_names_file_and_id(coco_json, tmp_path, ann, needle):
  root, path = coco_json(dict(dict(id=92, image_id=1, category_id=1, iscrowd=0,
                                   segmentation=[[1, 1, 9, 1, 9, 9]]), **ann))
  with pytest.raises(ValueError, match=needle) as info:
    coco_prepare.prepare_split(root, 'train2014', str(tmp_path / 'm'), workers=0,
                               class_names=coco.CLASS_NAMES, log=lambda _: None)
  assert f'{path}: annotation 92 (image 1)' in str(info.value)


def test_split_list_naming_a_missing_file(tmp_path):
  fx.voc_standard(str(tmp_path))
  layout = voc.detect(str(tmp_path))
  lists = os.path.join(layout.base, 'ImageSets', 'Segmentation')
  for name, split in (('val.txt', 'val'), ('train_aug.txt', 'train')):
    with open(os.path.join(lists, name), 'a') as f:
      f.write('2099_000001\n')
    with pytest.raises(FileNotFoundError) as info:
      voc.load_split(layout, split)
    msg = str(info.value)
    assert os.path.join(lists, name) in msg and 'missing' in msg
    assert os.path.join(layout.base, 'JPEGImages', '2099_000001.jpg') in msg


def test_non_utf8_and_space_file_names(tree, tmp_path):
  root, ids, folder = tree
  odd = [fx.rename_example(folder, ids[0], b'caf\xe9 au lait'),
         fx.rename_example(folder, ids[3], 'with space')]
  provider = _provider(root, str(tmp_path / 'w'))
  split = provider.split('train')
  assert set(odd) <= set(split.ids)
  for image_id in odd:
    i = split.ids.index(image_id)
    split.check(i)
    assert split.labels[i].any()  # from the renamed xml
    out = os.path.join(str(tmp_path / 'out'), f'{image_id}.png')  # a stage output named by id
    os.makedirs(os.path.dirname(out), exist_ok=True)
    io_utils.save_palette_png(out, split.mask(i))
    np.testing.assert_array_equal(io_utils.load_mask_png(out), split.mask(i))
  assert b'caf\xe9 au lait.png' in os.listdir(os.fsencode(str(tmp_path / 'out')))
  assert next(provider.train_batches())['image'].shape == (4, 32, 32, 3)  # tf reads them too


def test_list_file_ids_with_spaces_and_non_utf8_bytes(tmp_path):
  path = str(tmp_path / 'list.txt')
  with open(path, 'wb') as f:
    f.write(b'2008_000001\n  a b c  \r\ncaf\xe9 1\n'
            b'/JPEGImages/x y.jpg /SegmentationClassAug/x y.png\n\n2009.5\n')
  assert image_ids.read_id_list(path) == ['2008_000001', 'a b c', os.fsdecode(b'caf\xe9 1'),
                                          'x y', '2009.5']
