"""Tests for recurseed_jax.io_utils and recurseed_jax.export (the overlay figures: test_report)."""

import os
import tarfile

import numpy as np
from PIL import Image
import pytest

from recurseed_jax import export
from recurseed_jax import io_utils
from recurseed_jax import panels


def test_palette_first_colours():
  pal = io_utils.voc_palette()
  assert pal.shape == (256, 3) and pal.dtype == np.uint8
  assert pal[:5].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]]
  assert pal[15].tolist() == [192, 128, 128]  # person
  assert pal[255].tolist() == [224, 224, 192]  # the VOC ignore/border colour
  assert len({tuple(c) for c in pal.tolist()}) == 256


def test_palette_png_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  mask = rng.integers(0, 256, (17, 23)).astype(np.uint8)
  path = tmp_path / 'm.png'
  io_utils.save_palette_png(path, mask)
  with Image.open(path) as img:
    assert img.mode == 'P'
    assert img.getpalette()[:6] == [0, 0, 0, 128, 0, 0]
  np.testing.assert_array_equal(io_utils.load_mask_png(path), mask)
  Image.fromarray(mask).save(tmp_path / 'grey.png')  # mode 'L' masks load too
  np.testing.assert_array_equal(io_utils.load_mask_png(tmp_path / 'grey.png'), mask)
  assert [n for n in os.listdir(tmp_path) if '.tmp' in n] == []


def test_load_mask_errors(tmp_path):
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / 'rgb.png')
  with pytest.raises(ValueError, match=r'rgb\.png'):
    io_utils.load_mask_png(tmp_path / 'rgb.png')
  (tmp_path / 'junk.png').write_bytes(b'not a png')
  with pytest.raises(ValueError, match=r'junk\.png'):
    io_utils.load_mask_png(tmp_path / 'junk.png')


def test_atomic_path_removes_temp_on_error(tmp_path):
  target = tmp_path / 'x.json'
  with pytest.raises(RuntimeError):
    with io_utils.atomic_path(target) as tmp:
      assert os.path.basename(tmp).startswith('.x.json.tmp-')
      with open(tmp, 'w') as f:
        f.write('half')
      raise RuntimeError('boom')
  assert os.listdir(tmp_path) == []
  io_utils.save_json(target, {'a': 1})
  io_utils.atomic_write_bytes(tmp_path / 'b.bin', b'\x00\x01')
  io_utils.save_npz(tmp_path / 'c.npz', a=np.arange(3))
  np.testing.assert_array_equal(io_utils.load_npz(tmp_path / 'c.npz')['a'], np.arange(3))
  assert target.read_text().strip().startswith('{')
  assert (tmp_path / 'b.bin').read_bytes() == b'\x00\x01'
  assert sorted(os.listdir(tmp_path)) == ['b.bin', 'c.npz', 'x.json']


def test_load_npz_from_many_threads(tmp_path):
  """load_npz reads whole files or chosen keys, refuses pickles, and is safe from a thread pool
  (its lock serialises np.load's header parsing, which CPython 3.11 breaks under threads)."""
  import concurrent.futures as cf
  path = tmp_path / 's.npz'
  io_utils.save_npz_compressed(path, a=np.arange(6, dtype=np.float16).reshape(2, 3), b=np.ones(2))
  with cf.ThreadPoolExecutor(8) as pool:
    outs = list(pool.map(lambda _: io_utils.load_npz(path), range(200)))
  assert all(sorted(o) == ['a', 'b'] and o['a'].dtype == np.float16 for o in outs)
  np.testing.assert_array_equal(outs[-1]['a'], np.arange(6).reshape(2, 3))
  assert list(io_utils.load_npz(path, ('b',))) == ['b']
  np.save(tmp_path / 'o.npy', np.array([{'x': 1}], dtype=object))
  with open(tmp_path / 'o.npy', 'rb') as f:
    payload = f.read()
  import zipfile
  with zipfile.ZipFile(tmp_path / 'p.npz', 'w') as z:
    z.writestr('o.npy', payload)
  with pytest.raises(ValueError, match='pickle'):
    io_utils.load_npz(tmp_path / 'p.npz')


def test_write_overlays(tmp_path):
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (12, 20, 3)).astype(np.uint8)
  pred = rng.integers(0, 4, (12, 20)).astype(np.uint8)
  fig = panels.overlay_figure(image, rng.random((12, 20)), pred, pred, names=list('0abc'))
  paths = export.write_overlays(tmp_path / 'ov', [('a', fig), ('b.png', fig[:30])])
  assert [os.path.basename(p) for p in paths] == ['a.png', 'b.png']
  np.testing.assert_array_equal(np.asarray(Image.open(paths[0])), fig)
  np.testing.assert_array_equal(np.asarray(Image.open(paths[1])), fig[:30])
  assert sorted(os.listdir(tmp_path / 'ov')) == ['a.png', 'b.png']  # no temp file left


def test_voc_submission_tree(tmp_path):
  pred_dir = tmp_path / 'pred'
  pred_dir.mkdir()
  for i in range(3):
    io_utils.save_palette_png(pred_dir / f'2008_00000{i}.png', np.full((5, 6), i, np.uint8))
  tar_path = export.voc_submission_tree(str(pred_dir), str(tmp_path / 'sub'),
                                        ids=['2008_000000', '2008_000002'])
  assert tar_path == str(tmp_path / 'sub' / 'results.tar.gz')
  cls_dir = tmp_path / 'sub' / 'results' / 'VOC2012' / 'Segmentation' / 'comp6_test_cls'
  assert sorted(os.listdir(cls_dir)) == ['2008_000000.png', '2008_000002.png']
  with tarfile.open(tar_path) as tar:
    names = sorted(tar.getnames())
    assert names == ['results/VOC2012/Segmentation/comp6_test_cls/2008_000000.png',
                     'results/VOC2012/Segmentation/comp6_test_cls/2008_000002.png']
    data = tar.extractfile(names[1]).read()
  assert data == (pred_dir / '2008_000002.png').read_bytes()
  assert not [n for n in os.listdir(tmp_path / 'sub') if '.tmp' in n]
  with pytest.raises(FileNotFoundError, match='nope'):
    export.voc_submission_tree(str(pred_dir), str(tmp_path / 'sub2'), ids=['nope'])


def test_write_masks_palette_and_gray(tmp_path):
  rng = np.random.default_rng(1)
  src = tmp_path / 'pred'
  src.mkdir()
  masks = {f'COCO_val2014_{i:012d}': rng.integers(0, 81, (9, 11)).astype(np.uint8)
           for i in range(3)}
  masks['COCO_val2014_000000000000'][0, 0] = 255  # ignore survives too
  for name, mask in masks.items():
    io_utils.save_palette_png(src / f'{name}.png', mask)
  for fmt, mode in (('gray', 'L'), ('palette', 'P')):
    paths = export.write_masks(str(src), str(tmp_path / fmt), fmt)
    assert sorted(os.path.basename(p)[:-4] for p in paths) == sorted(masks)
    for path in paths:
      with Image.open(path) as img:
        assert img.mode == mode
      name = os.path.basename(path)[:-4]
      np.testing.assert_array_equal(io_utils.load_mask_png(path), masks[name])
  with pytest.raises(ValueError, match='rgb'):
    export.write_masks(str(src), str(tmp_path / 'x'), 'rgb')
  with pytest.raises(FileNotFoundError, match='nope'):
    export.write_masks(str(tmp_path / 'nope'), str(tmp_path / 'x'))
