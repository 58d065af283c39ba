"""Scoring label maps: folders of PNGs against a split or a folder, tables, the CLI.

Predictions are label maps (0 background, 1..C classes); ground truth may hold 255 (ignored).
`evaluate_split` scores a folder of PNGs against a dataset split's masks (launch.py
--stages=evaluate), `evaluate_dirs` against another folder; images are read on a thread pool.

CLI (folder against folder; the class count is read off the masks unless given):
  python -m recurseed_jax.evaluate --pred DIR --gt DIR [--num-classes 20] [--out scores.json]
"""

import argparse
import concurrent.futures as cf
import math
import os

import numpy as np
import tqdm

from recurseed_jax import cli
from recurseed_jax import confusion
from recurseed_jax import io_utils

VOC_CLASSES = (
    'background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair',
    'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa',
    'train', 'tvmonitor')


def _fmt(x, pct=False):
  if x is None or math.isnan(x):
    return '-'
  return f'{100 * x:.1f}' if pct else f'{x:.3f}'


def format_table(scores_dict, class_names=None):
  """Markdown table: class, IoU %, FP, FN per class, then the mean row."""
  iou = scores_dict['iou']
  if class_names is None:
    class_names = [f'class {i}' for i in range(len(iou))]
  if len(class_names) != len(iou):
    raise ValueError(f'{len(class_names)} class names for {len(iou)} classes')
  lines = ['| class | IoU (%) | FP | FN |', '|---|---:|---:|---:|']
  for name, i, fp, fn in zip(class_names, iou, scores_dict['fp'], scores_dict['fn']):
    lines.append(f'| {name} | {_fmt(i, True)} | {_fmt(fp)} | {_fmt(fn)} |')
  lines.append(f"| **mean** | **{_fmt(scores_dict['miou'], True)}** | "
               f"{_fmt(scores_dict.get('mean_fp', math.nan))} | "
               f"{_fmt(scores_dict.get('mean_fn', math.nan))} |")
  return '\n'.join(lines)


def sum_confusions(fn, items, workers=None, desc='evaluate'):
  """Sums the dicts {name: confusion matrix} that `fn(item)` returns, over a thread pool.

  PNG decoding and bincount release the GIL, so threads scale on the cores; results are summed
  in item order, so the totals do not depend on the thread count.
  """
  items = list(items)
  workers = workers or min(8, os.cpu_count() or 1)
  totals = {}
  with cf.ThreadPoolExecutor(workers) as pool:
    for out in tqdm.tqdm(pool.map(fn, items), total=len(items), desc=desc, unit='img',
                         dynamic_ncols=True):
      for key, conf in out.items():
        totals[key] = totals[key] + conf if key in totals else conf.copy()
  return totals


def _pair_confusion(pred_path, gt, gt_name, num_labels, ignore):
  if not os.path.exists(pred_path):
    raise FileNotFoundError(f'missing prediction {pred_path} for ground truth {gt_name}')
  pred = io_utils.load_mask_png(pred_path)
  if pred.shape != gt.shape:
    raise ValueError(f'size mismatch: prediction {pred_path} is {pred.shape}, '
                     f'ground truth {gt_name} is {gt.shape}')
  try:
    return confusion.confusion_matrix(pred, gt, num_labels, ignore=ignore)
  except ValueError as e:
    raise ValueError(f'{pred_path} / {gt_name}: {e}') from e


def _png_ids(folder):
  return sorted(n[:-4] for n in os.listdir(folder)
                if n.endswith('.png') and not io_utils.is_temp_name(n))


def split_confusion(pred_dir, split, num_labels, ids=None, ignore=255, workers=None):
  """The confusion matrix of `<pred_dir>/<id>.png` against the split's masks (every image, or
  the given ids)."""
  if not split.has_masks:
    raise ValueError(f'this split has no masks to score {pred_dir} against')
  index = {image_id: i for i, image_id in enumerate(split.ids)}
  ids = list(split.ids) if ids is None else list(ids)

  def one(image_id):
    gt = split.mask(index[image_id])
    pred_path = os.path.join(pred_dir, f'{image_id}.png')
    return {'conf': _pair_confusion(pred_path, gt, f'mask of {image_id!r}', num_labels, ignore)}

  return sum_confusions(one, ids, workers).get('conf', np.zeros((num_labels,) * 2, np.int64))


def evaluate_split(pred_dir, split, num_labels, ids=None, ignore=255, workers=None):
  """Scores `<pred_dir>/<id>.png` against the split's masks (every image, or the given ids)."""
  conf = split_confusion(pred_dir, split, num_labels, ids, ignore, workers)
  return {**confusion.scores(conf), 'num_images': len(split.ids if ids is None else ids)}


def evaluate_dirs(pred_dir, gt_dir, num_labels=None, ids=None, ignore=255, workers=None):
  """Scores every `<gt_dir>/<id>.png` (or the given ids) against `<pred_dir>/<id>.png`.

  num_labels None: 1 + the largest label seen in either folder (classes absent from both have no
  IoU and do not count in the mean, so this gives the mIoU a full class count would).
  """
  if ids is None:
    ids = _png_ids(gt_dir)
    if not ids:
      raise FileNotFoundError(f'no ground-truth PNGs in {gt_dir}')
  n = 255 if num_labels is None else num_labels  # uint8 maps: labels 0..254 (255 is ignore)

  def one(image_id):
    gt_path = os.path.join(gt_dir, f'{image_id}.png')
    pred_path = os.path.join(pred_dir, f'{image_id}.png')
    if not os.path.exists(pred_path):
      raise FileNotFoundError(f'missing prediction {pred_path} for ground truth {gt_path}')
    return {'conf': _pair_confusion(pred_path, io_utils.load_mask_png(gt_path), gt_path, n,
                                    ignore)}

  conf = sum_confusions(one, ids, workers)['conf']
  if num_labels is None:
    seen = np.flatnonzero(conf.sum(0) + conf.sum(1))
    num_labels = int(seen.max()) + 1 if seen.size else 1
    conf = conf[:num_labels, :num_labels]
  return {**confusion.scores(conf), 'num_images': len(ids), 'num_labels': num_labels}


def report(results, class_names, titles=None):
  """evaluation.md: a summary table of every product, then its per-class IoU / FP / FN table."""
  titles = titles or {}
  lines = ['# Evaluation', '', '| product | mIoU % | FP | FN | images |',
           '|---|---:|---:|---:|---:|']
  for key, sc in results.items():
    lines.append(f"| {titles.get(key, key)} | {_fmt(sc['miou'], True)} | "
                 f"{_fmt(sc['mean_fp'])} | {_fmt(sc['mean_fn'])} | {sc.get('num_images', '-')} |")
  lines += ['', 'FP, FN: false positives and negatives of a class over its union with the truth '
            '(IoU + FP + FN = 1).']
  for key, sc in results.items():
    lines += ['', f'## {titles.get(key, key)}', '', format_table(sc, class_names)]
  return '\n'.join(lines) + '\n'


def _json_safe(obj):
  # NaN is not valid JSON; absent classes become null.
  if isinstance(obj, float) and math.isnan(obj):
    return None
  if isinstance(obj, list):
    return [_json_safe(x) for x in obj]
  if isinstance(obj, dict):
    return {k: _json_safe(v) for k, v in obj.items()}
  return obj


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--pred', required=True, help='folder of predicted label PNGs')
  parser.add_argument('--gt', required=True, help='folder of ground-truth label PNGs')
  parser.add_argument('--num-classes', type=int, default=None,
                      help='foreground classes (labels = N + 1 with background); default: the '
                      'largest label found')
  parser.add_argument('--ids', help='optional text file of image ids, one per line')
  parser.add_argument('--out', help='optional JSON file for the scores')
  parser.add_argument('--workers', type=int, default=None, help='reader threads (default: cores)')
  args = parser.parse_args(argv)
  for flag, folder in (('--pred', args.pred), ('--gt', args.gt)):
    if not os.path.isdir(folder):
      raise FileNotFoundError(f'{flag} {folder}: no such folder')
  ids = None
  if args.ids:
    with open(args.ids) as f:
      ids = [line.strip() for line in f if line.strip()]
  num_labels = None if args.num_classes is None else args.num_classes + 1
  result = evaluate_dirs(args.pred, args.gt, num_labels, ids=ids, workers=args.workers)
  n = len(result['iou'])
  names = VOC_CLASSES if n == len(VOC_CLASSES) else (
      ['background'] + [f'class {i}' for i in range(1, n)])
  print(format_table(result, names))
  print(f"mIoU {100 * result['miou']:.2f}  pixel acc {100 * result['pixel_acc']:.2f}  "
        f"FP {result['mean_fp']:.3f}  FN {result['mean_fn']:.3f}  ({result['num_images']} images, "
        f'{n} labels)')
  if args.out:
    io_utils.save_json(args.out, _json_safe(result))


def cli_main():
  """The `recurseed-evaluate` command (pyproject.toml)."""
  cli.run(main)


if __name__ == '__main__':
  cli_main()
