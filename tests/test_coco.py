"""COCO 2014: the prepare step on a generated instances JSON, both layouts, the paper config."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import coco14_rs50
from configs import default
import data_fixtures as fx
from data_pipeline import coco
from data_pipeline import coco_prepare
from data_pipeline import providers
from data_pipeline import registry
from recurseed_jax import config_lib
from recurseed_jax import io_utils

try:
  import pycocotools  # noqa: F401
  HAVE_COCOTOOLS = True
except ImportError:
  HAVE_COCOTOOLS = False
requires_cocotools = pytest.mark.skipif(not HAVE_COCOTOOLS, reason='pycocotools is not installed')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = 'COCO_train2014_{:012d}'


def _config(root, **data):
  c = default.get_config()
  c.data.name, c.data.root, c.data.num_classes = 'coco14', root, 80
  c.data.crop_size, c.data.scale_range, c.data.long_side = 32, None, (24, 48)
  c.data.workers, c.data.threads = 1, 1
  c.train.batch_size = 2
  for k, v in data.items():
    c.data[k] = v
  return c


@requires_cocotools
def test_prepare_rasterises_overlaps_crowd_and_empty_images(tmp_path):
  root, out = str(tmp_path / 'coco'), str(tmp_path / 'masks')
  fx.coco_distributed(root)
  labels_file = coco_prepare.prepare_split(root, 'train2014', out, workers=0,
                                           class_names=coco.CLASS_NAMES, log=lambda _: None)
  with open(labels_file) as f:
    labels = json.load(f)
  assert labels == {TRAIN.format(1): [0, 16], TRAIN.format(2): [], TRAIN.format(3): [79]}
  m1 = io_utils.load_mask_png(os.path.join(out, 'train2014', TRAIN.format(1) + '.png'))
  assert m1.shape == (30, 40)
  assert m1[5, 5] == 1          # person (category 1 -> 1)
  assert m1[15, 15] == 17       # dog (category 18 -> 17) drawn over the person
  assert m1[22, 25] == 17
  assert (m1[:, 35:] == 255).all()  # the crowd RLE
  assert m1[28, 2] == 0
  m2 = io_utils.load_mask_png(os.path.join(out, 'train2014', TRAIN.format(2) + '.png'))
  assert m2.shape == (40, 30) and not m2.any()  # no annotation: all background
  m3 = io_utils.load_mask_png(os.path.join(out, 'train2014', TRAIN.format(3) + '.png'))
  assert m3[15, 15] == 80       # category id 90 -> the 80th class
  assert not [n for n in os.listdir(os.path.join(out, 'train2014')) if io_utils.is_temp_name(n)]

  # Resumable: a rerun with the labels file is a no-op; without it, existing PNGs are kept.
  mtime = os.path.getmtime(os.path.join(out, 'train2014', TRAIN.format(1) + '.png'))
  os.remove(labels_file)
  os.remove(os.path.join(out, 'train2014', TRAIN.format(3) + '.png'))
  coco_prepare.prepare_split(root, 'train2014', out, workers=2, class_names=coco.CLASS_NAMES,
                             log=lambda _: None)  # the process pool
  assert os.path.getmtime(os.path.join(out, 'train2014', TRAIN.format(1) + '.png')) == mtime
  np.testing.assert_array_equal(
      io_utils.load_mask_png(os.path.join(out, 'train2014', TRAIN.format(3) + '.png')), m3)
  with open(labels_file) as f:
    assert json.load(f) == labels


@requires_cocotools
def test_prepare_cli(tmp_path):
  root = str(tmp_path / 'coco')
  fx.coco_distributed(root)
  assert coco_prepare.main(['--root', root, '--folders', 'val2014', '--workers', '0']) == 0
  assert os.path.exists(os.path.join(root, 'semantic_masks', 'val2014_labels.json'))
  assert coco_prepare.main(['--root', str(tmp_path / 'none'), '--workers', '0']) == 2


def _bad_annotations(root, kind):
  """A COCO root whose val2014 annotation file is wrong in the way `kind` says."""
  path = os.path.join(root, 'annotations', 'instances_val2014.json')
  os.makedirs(os.path.dirname(path))
  if kind == 'folder':
    os.makedirs(path)
    return path
  text = {'cut short': '{"images": [{"id": 1, ',
          'not instances': '[1, 2]',
          'entry lacks fields': json.dumps(dict(images=[dict(id=1, file_name='a.jpg')],
                                                categories=[], annotations=[])),
          'segmentation neither': json.dumps(dict(
              images=[dict(id=1, file_name='a.jpg', height=4, width=4)],
              categories=[dict(id=i, name=n) for i, n in zip(coco.CATEGORY_IDS, coco.CLASS_NAMES)],
              annotations=[dict(id=7, image_id=1, category_id=1, segmentation=3)]))}[kind]
  with open(path, 'w') as f:
    f.write(text)
  return path


def _cli(argv, capsys):
  """(exit status, stderr lines) of coco_prepare.main; argparse's errors come as SystemExit."""
  try:
    status = coco_prepare.main(argv)
  except SystemExit as e:
    status = e.code
  return status, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize('argv, says', [
    ([], 'the following arguments are required: --root'),
    (['--workers', 'x', '--root', '.'], "invalid int value: 'x'"),
    (['--root', '{tmp}/none'], '--root {tmp}/none is not a folder'),
])
def test_prepare_cli_usage_errors_are_one_line(tmp_path, capsys, argv, says):
  argv = [a.format(tmp=tmp_path) for a in argv]
  status, err = _cli(argv, capsys)
  assert status == 2 and len(err) == 1, err
  assert err[0].startswith('error: ') and says.format(tmp=tmp_path) in err[0]


@requires_cocotools
@pytest.mark.parametrize('kind, says', [
    ('cut short', 'cannot parse COCO annotations {path}'),
    ('not instances', "{path} is not a COCO instances file: it has no 'images' list"),
    ('entry lacks fields', '{path}: images[0] lacks height, width'),
    ('segmentation neither', '{path}: annotation 7 (image 1) has a segmentation that is neither'),
    ('folder', "Is a directory: '{path}'"),
])
def test_prepare_cli_bad_annotations_are_one_line(tmp_path, capsys, kind, says):
  root = str(tmp_path / 'coco')
  path = _bad_annotations(root, kind)
  status, err = _cli(['--root', root, '--folders', 'val2014', '--workers', '0'], capsys)
  assert status == 2 and len(err) == 1, err
  assert err[0].startswith('error: ') and says.format(path=path) in err[0], err[0]


@requires_cocotools
def test_prepare_module_ends_a_user_error_without_traceback(tmp_path):
  root = str(tmp_path / 'coco')
  path = _bad_annotations(root, 'cut short')
  r = subprocess.run([sys.executable, '-m', 'data_pipeline.coco_prepare', '--root', root,
                      '--workers', '0', '--folders', 'val2014'], cwd=ROOT, capture_output=True,
                     text=True, timeout=60)
  err = r.stderr.strip().splitlines()
  assert r.returncode == 2 and len(err) == 1 and path in err[0], r.stderr
  assert 'Traceback' not in r.stdout + r.stderr


def test_missing_pycocotools_is_a_clear_error(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'pycocotools', None)
  with pytest.raises(ImportError, match='pip install pycocotools'):
    coco_prepare.prepare_split(str(tmp_path), 'train2014', str(tmp_path / 'm'))


@requires_cocotools
def test_distributed_layout_prepared_lazily(tmp_path):
  root = str(tmp_path / 'coco')
  sizes = fx.coco_distributed(root)
  lines = []
  provider = providers.FileData(_config(root), str(tmp_path / 'w'), log=lines.append)
  assert provider.layout.kind == coco.DISTRIBUTED
  assert any('rasterising COCO train2014' in line for line in lines)
  assert any('left out 1 of 3 images without any class' in line for line in lines)
  train = provider.split('train')
  assert train.ids == [TRAIN.format(1), TRAIN.format(3)]
  assert [np.flatnonzero(row).tolist() for row in train.labels] == [[0, 16], [79]]
  for i, image_id in enumerate(train.ids):
    assert train.size(i) == sizes[image_id] == train.mask(i).shape
  val = provider.split('val')
  assert val.ids == ['COCO_val2014_000000000004'] and val.labels[0, 15] == 1
  with pytest.raises(ValueError, match="unknown COCO split 'test'"):
    provider.split('test')
  batch = next(provider.train_batches())
  assert batch['image'].shape == (2, 32, 32, 3) and batch['label'].shape == (2, 80)


@pytest.mark.parametrize('xml', [True, False])
def test_authors_layout_labels_from_xml_or_masks(tmp_path, xml):
  ids = fx.coco_authors(str(tmp_path), xml=xml)
  layout = coco.detect(str(tmp_path))
  assert layout.kind == coco.AUTHORS
  for name in ('train', 'val'):
    split = coco.load_split(layout, name, workers=1)
    assert split.ids == ids[name]
    for i in range(len(split)):
      present = {int(v) - 1 for v in np.unique(split.mask(i)) if 0 < v < 255}
      assert present == set(np.flatnonzero(split.labels[i]).tolist())


def test_registry_class_count_is_the_readers():
  assert registry.DATASETS['coco14'] == coco.NUM_CLASSES == len(coco.CLASS_NAMES) == 80
  assert len(coco.CATEGORY_IDS) == 80


def test_missing_root_names_path_and_layouts(tmp_path):
  with pytest.raises(FileNotFoundError) as info:
    coco.detect(str(tmp_path))
  msg = str(info.value)
  assert str(tmp_path) in msg and "authors' layout" in msg and 'as distributed' in msg
  os.makedirs(tmp_path / 'train2014')
  with pytest.raises(FileNotFoundError, match='instances_train2014.json'):
    coco.load_split(coco.detect(str(tmp_path)), 'train')


def test_category_names_checked():
  cats = [dict(id=i, name=n) for i, n in zip(coco.CATEGORY_IDS, coco.CLASS_NAMES)]
  assert coco_prepare.category_labels(cats, coco.CLASS_NAMES)[90] == 80
  cats[0]['name'] = 'human'
  with pytest.raises(ValueError, match='not the 80 COCO classes'):
    coco_prepare.category_labels(cats, coco.CLASS_NAMES)


def test_paper_config_is_valid_and_documented():
  cfg = coco14_rs50.get_config()
  assert cfg.data.name == 'coco14' and cfg.data.num_classes == 80
  cfg.data.root = '/data/coco'
  cfg.model.init = 'scratch'  # the weights file is the user's
  config_lib.validate(cfg)
  assert 'python launch.py --config configs/coco14_rs50.py' in coco14_rs50.__doc__
