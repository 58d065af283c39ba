"""Tests for recurseed_jax.scoring (folders and splits, tables) and the evaluate CLI."""

import json
import math
import os

import numpy as np
from PIL import Image
import pytest

from recurseed_jax import cli
from recurseed_jax import confusion
from recurseed_jax import evaluate
from recurseed_jax import io_utils
from recurseed_jax import scoring
import report_fixtures as rf


def _slow_confusion(pred, gt, n, ignore=255):
  conf = np.zeros((n, n), np.int64)
  for p, g in zip(pred.ravel().tolist(), gt.ravel().tolist()):
    if g != ignore:
      conf[g, p] += 1
  return conf


def test_confusion_matches_per_pixel_loop():
  rng = np.random.default_rng(0)
  n = 6
  for _ in range(3):
    gt = rng.integers(0, n, (31, 47)).astype(np.uint8)
    gt[rng.random(gt.shape) < 0.2] = 255
    pred = rng.integers(0, n, gt.shape).astype(np.uint8)
    pred[gt == 255] = 255  # out-of-range predictions under ignore pixels are fine
    conf = confusion.confusion_matrix(pred, gt, n)
    assert conf.dtype == np.int64 and conf.shape == (n, n)
    np.testing.assert_array_equal(conf, _slow_confusion(pred, gt, n))
    assert conf.sum() == (gt != 255).sum()


def test_perfect_prediction_and_absent_classes():
  gt = np.zeros((10, 10), np.uint8)
  gt[:5] = 1
  gt[7:, 7:] = 3
  gt[0, 0] = 255
  s = confusion.scores(confusion.confusion_matrix(gt.copy(), gt, 5))
  assert s['miou'] == 1.0 and s['pixel_acc'] == 1.0
  assert math.isnan(s['iou'][2]) and math.isnan(s['iou'][4])  # absent from gt and pred
  assert s['fp'][1] == 0.0 and s['fn'][3] == 0.0


def test_scores_values():
  # rows gt, cols pred: class 0 tp 6, fn 2 (predicted 1), fp 1; class 1 tp 3, fp 2, fn 1.
  conf = np.array([[6, 2, 0], [1, 3, 0], [0, 0, 0]])
  s = confusion.scores(conf)
  np.testing.assert_allclose(s['iou'][:2], [6 / 9, 3 / 6])
  np.testing.assert_allclose(s['fp'][:2], [1 / 9, 2 / 6])
  np.testing.assert_allclose(s['fn'][:2], [2 / 9, 1 / 6])
  assert math.isnan(s['iou'][2])
  assert s['miou'] == pytest.approx((6 / 9 + 3 / 6) / 2)
  assert s['pixel_acc'] == pytest.approx(9 / 12)
  table = scoring.format_table(s, ['bg', 'a', 'b'])
  assert '| a | 50.0 | 0.333 | 0.167 |' in table and '| b | - | - | - |' in table
  assert table.splitlines()[-1].startswith('| **mean** | **58.3**')


def test_confusion_errors():
  gt = np.zeros((4, 4), np.uint8)
  with pytest.raises(ValueError, match='prediction labels'):
    confusion.confusion_matrix(np.full((4, 4), 7, np.uint8), gt, 5)
  with pytest.raises(ValueError, match='shape'):
    confusion.confusion_matrix(np.zeros((4, 5), np.uint8), gt, 5)
  with pytest.raises(ValueError, match='ground-truth labels'):
    confusion.confusion_matrix(gt, np.full((4, 4), 9, np.uint8), 5)


def test_evaluate_dirs_and_cli(tmp_path, capsys):
  rng = np.random.default_rng(1)
  pred_dir, gt_dir = tmp_path / 'pred', tmp_path / 'gt'
  pred_dir.mkdir()
  gt_dir.mkdir()
  total = np.zeros((4, 4), np.int64)
  for i in range(3):
    gt = rng.integers(0, 4, (9, 13)).astype(np.uint8)
    gt[0] = 255
    pred = np.where(rng.random(gt.shape) < 0.7, gt, rng.integers(0, 4, gt.shape)).astype(np.uint8)
    pred[gt == 255] = 0
    io_utils.save_palette_png(gt_dir / f'im{i}.png', gt)
    io_utils.save_palette_png(pred_dir / f'im{i}.png', pred)
    total += _slow_confusion(pred, gt, 4)
  s = scoring.evaluate_dirs(str(pred_dir), str(gt_dir), 4)
  assert s['num_images'] == 3
  assert s['miou'] == pytest.approx(confusion.scores(total)['miou'])

  out = tmp_path / 'scores.json'
  evaluate.main(['--pred', str(pred_dir), '--gt', str(gt_dir), '--num-classes', '3',
                 '--out', str(out)])
  assert '| **mean** |' in capsys.readouterr().out
  assert json.loads(out.read_text())['miou'] == pytest.approx(s['miou'])

  # Size mismatch names both files; a missing prediction names the file.
  io_utils.save_palette_png(pred_dir / 'im1.png', np.zeros((5, 5), np.uint8))
  with pytest.raises(ValueError, match=r'im1\.png.*gt.*im1\.png'):
    scoring.evaluate_dirs(str(pred_dir), str(gt_dir), 4)
  os.remove(pred_dir / 'im2.png')
  with pytest.raises(FileNotFoundError, match=r'im2\.png'):
    scoring.evaluate_dirs(str(pred_dir), str(gt_dir), 4, ids=['im0', 'im2'])


def _slow_scores(pairs, n):
  """Per class, by pixel loops: IoU, FP and FN over the union; absent classes None."""
  tp, fp, fn = [0] * n, [0] * n, [0] * n
  for pred, gt in pairs:
    for p, g in zip(pred.ravel().tolist(), gt.ravel().tolist()):
      if g == 255:
        continue
      if p == g:
        tp[g] += 1
      else:
        fn[g] += 1
        fp[p] += 1
  out = []
  for c in range(n):
    union = tp[c] + fp[c] + fn[c]
    out.append(None if union == 0 else (tp[c] / union, fp[c] / union, fn[c] / union))
  return out


class _MaskSplit:

  def __init__(self, masks):
    self.masks = masks
    self.ids = [f'm{i}' for i in range(len(masks))]
    self.has_masks = True

  def __len__(self):
    return len(self.masks)

  def mask(self, i):
    return self.masks[i]


def _random_pairs(rng, n, count=4):
  pairs = []
  for k in range(count):
    gt = rng.integers(0, n - 1, (11 + k, 13 + 2 * k)).astype(np.uint8)  # class n - 1 never in gt
    gt[rng.random(gt.shape) < 0.15] = 255
    pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, n, gt.shape)).astype(np.uint8)
    pred[gt == 255] = rng.integers(0, n, int((gt == 255).sum()))  # under ignore: anything
    pairs.append((pred, gt))
  return pairs


def test_evaluate_split_and_dirs_match_slow_reference(tmp_path):
  rng = np.random.default_rng(2)
  n = 5
  pairs = _random_pairs(rng, n)
  pred_dir, gt_dir = tmp_path / 'pred', tmp_path / 'gt'
  pred_dir.mkdir()
  gt_dir.mkdir()
  for i, (pred, gt) in enumerate(pairs):
    io_utils.save_palette_png(pred_dir / f'm{i}.png', pred)
    io_utils.save_palette_png(gt_dir / f'm{i}.png', gt)
  ref = _slow_scores(pairs, n)
  split = _MaskSplit([gt for _, gt in pairs])
  for workers in (1, 3):
    results = [scoring.evaluate_split(str(pred_dir), split, n, workers=workers),
               scoring.evaluate_dirs(str(pred_dir), str(gt_dir), n, workers=workers)]
    for s in results:
      assert s['num_images'] == 4
      for c in range(n):
        assert ref[c] is not None  # class n - 1 is only predicted: IoU 0, FP 1
        np.testing.assert_allclose([s['iou'][c], s['fp'][c], s['fn'][c]], ref[c], rtol=1e-12)
      assert s['miou'] == pytest.approx(np.mean([r[0] for r in ref]))
  # Without a class count, the largest label seen decides it (the same mIoU).
  auto = scoring.evaluate_dirs(str(pred_dir), str(gt_dir))
  assert auto['num_labels'] == n and auto['miou'] == pytest.approx(results[0]['miou'])
  with pytest.raises(FileNotFoundError, match=r'm9\.png'):
    scoring.evaluate_split(str(pred_dir), _MaskSplit([pairs[0][1]] * 10), n, ids=['m9'])


def test_cli_without_class_count_and_report(tmp_path, capsys):
  rng = np.random.default_rng(3)
  for d in ('p', 'g'):
    (tmp_path / d).mkdir()
  for i, (pred, gt) in enumerate(_random_pairs(rng, 21, count=2)):
    io_utils.save_palette_png(tmp_path / 'p' / f'x{i}.png', pred)
    io_utils.save_palette_png(tmp_path / 'g' / f'x{i}.png', gt)
  evaluate.main(['--pred', str(tmp_path / 'p'), '--gt', str(tmp_path / 'g'), '--out',
                 str(tmp_path / 's.json')])
  printed = capsys.readouterr().out
  assert '| aeroplane |' in printed and '21 labels' in printed  # VOC names for 21 labels
  saved = json.loads((tmp_path / 's.json').read_text())
  assert saved['num_labels'] == 21 and 0 < saved['miou'] < 1
  md = scoring.report({'val': confusion.scores(np.eye(3, dtype=np.int64))}, ['bg', 'a', 'b'],
                       {'val': 'segmentation head (val)'})
  assert '| segmentation head (val) | 100.0 |' in md and '## segmentation head (val)' in md


def test_per_image_scores_are_each_images_own():
  rng = np.random.default_rng(4)
  pairs = _random_pairs(rng, 5, count=5)
  pairs[2] = (pairs[2][0], np.full_like(pairs[2][1], 255))  # no labelled pixel: NaN
  confs = {i: confusion.confusion_matrix(p, g, 5) for i, (p, g) in enumerate(pairs)}
  per_image = {}
  totals = scoring.sum_confusions(lambda i: {'a': confs[i], 'b': confs[i][:2, :2]}, range(5),
                                  workers=3, per_image=per_image)
  np.testing.assert_array_equal(totals['a'], sum(confs.values()))
  assert list(per_image['a']) == list(range(5))  # in item order, whatever the threads
  for i, conf in confs.items():
    want = confusion.scores(conf)['miou']
    got = per_image['a'][i]
    assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, abs=1e-12)
    assert per_image['b'][i] == pytest.approx(confusion.scores(conf[:2, :2])['miou'],
                                              nan_ok=True)
  assert math.isnan(per_image['a'][2])


def _report_folders(tmp_path, count=7):
  """pred/, gt/ (grey) and images/ (JPEG) of `count` images of 3 classes, worse as k grows."""
  rng = np.random.default_rng(3)
  dirs = [tmp_path / d for d in ('pred', 'gt', 'images')]
  for d in dirs:
    d.mkdir()
  for k in range(count):
    gt = np.zeros((30 + k, 40), np.uint8)
    gt[5:20, 8:30] = 1 + k % 3
    gt[20, 8:30] = 255
    pred = np.where(rng.random(gt.shape) < 0.1 * k, 0, np.where(gt == 255, 0, gt))
    Image.fromarray(gt).save(dirs[1] / f'im{k}.png')
    io_utils.save_palette_png(dirs[0] / f'im{k}.png', pred.astype(np.uint8))
    Image.fromarray(rng.integers(0, 255, gt.shape + (3,), dtype=np.uint8)).save(
        dirs[2] / f'im{k}.jpg')
  return [str(d) for d in dirs]


def test_cli_report(tmp_path, capsys):
  pred, gt, images = _report_folders(tmp_path)
  out = str(tmp_path / 'sub' / 'folder.html')
  evaluate.main(['--pred', pred, '--gt', gt, '--report', out, '--images', images])
  assert f'report: {out}' in capsys.readouterr().out
  with open(out, encoding='utf-8') as f:
    text = f.read()
  page = rf.Page(text)
  want = scoring.evaluate_dirs(pred, gt)
  row = page.tables[0][1]
  assert row[1] == f'{100 * want["miou"]:.1f}' and row[4] == '7'
  assert [r[0] for r in page.tables[1][1:-1]] == ['background', 'class 1', 'class 2', 'class 3']
  groups = [f['data-group'] for f in page.figures]
  assert groups == ['worst'] * 2 + ['median'] * 2 + ['best'] * 2  # the fixed (ends) are ranked
  ids = [f['data-id'] for f in page.figures]
  assert ids == ['im6', 'im5', 'im4', 'im3', 'im1', 'im0']  # noise grows with k
  assert len(page.imgs) == 6 and all(a['src'].startswith('data:image/png;base64,')
                                     for a in page.imgs)
  assert '--images' in text  # the command that made it


@pytest.mark.parametrize('change,needle', [
    (lambda d: ['--report', str(d / 'r.html'), '--images', str(d / 'nope')],
     '--images {d}/nope: no such folder'),
    (lambda d: ['--images', str(d / 'images')], '--images is only read with --report'),
    (lambda d: ['--report', str(d / 'r.html'), '--images', str(d / 'empty')], 'no image im'),
    (lambda d: ['--report', str(d / 'file' / 'r.html')], '{d}/file'),
])
def test_cli_bad_input_is_one_line(tmp_path, capsys, change, needle):
  pred, gt, _ = _report_folders(tmp_path, count=3)
  (tmp_path / 'file').write_text('a file, not a folder')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(SystemExit) as info:
    cli.run(evaluate.main, ['--pred', pred, '--gt', gt, *change(tmp_path)])
  assert info.value.code == cli.EXIT_USAGE
  err = capsys.readouterr().err
  last = err.strip().splitlines()[-1]  # after the progress bars
  assert last.startswith('error: ') and needle.format(d=tmp_path) in last, err[-500:]
  assert 'Traceback' not in err and not (tmp_path / 'r.html').exists()
