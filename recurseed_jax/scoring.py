"""Scoring label maps: folders of PNGs against a split or a folder, and evaluation.md's tables.

Predictions are label maps (0 background, 1..C classes); ground truth may hold 255 (ignored).
`evaluate_split` scores a folder of PNGs against a dataset split's masks (launch.py
--stages=evaluate), `evaluate_dirs` against another folder; images are read on a thread pool.
The confusion matrices and their scores are confusion.py's; the CLI is evaluate.py.
"""

import concurrent.futures as cf
import math
import os

import numpy as np
import tqdm

from recurseed_jax import confusion
from recurseed_jax import io_utils


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


def sum_confusions(fn, items, workers=None, desc='evaluate', per_image=None):
  """Sums the dicts {name: confusion matrix} that `fn(item)` returns, over a thread pool.

  PNG decoding and bincount release the GIL, so threads scale on the cores; results are summed
  in item order, so the totals do not depend on the thread count. `per_image`, a dict, is filled
  with {name: {item: its own mIoU}} (NaN where it has no labelled pixel): what the report ranks
  its gallery by.
  """
  items = list(items)
  workers = workers or min(8, os.cpu_count() or 1)
  totals = {}
  with cf.ThreadPoolExecutor(workers) as pool:
    for item, out in zip(items, tqdm.tqdm(pool.map(fn, items), total=len(items), desc=desc,
                                          unit='img', dynamic_ncols=True)):
      for key, conf in out.items():
        totals[key] = totals[key] + conf if key in totals else conf.copy()
        if per_image is not None:
          per_image.setdefault(key, {})[item] = confusion.scores(conf)['miou']
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


def split_confusion(pred_dir, split, num_labels, ids=None, ignore=255, workers=None,
                    per_image=None):
  """The confusion matrix of `<pred_dir>/<id>.png` against the split's masks (every image, or
  the given ids); per_image: sum_confusions', filled under 'conf' by image id."""
  if not split.has_masks:
    raise ValueError(f'this split has no masks to score {pred_dir} against')
  index = {image_id: i for i, image_id in enumerate(split.ids)}
  ids = list(split.ids) if ids is None else list(ids)

  def one(image_id):
    gt = split.mask(index[image_id])
    pred_path = os.path.join(pred_dir, f'{image_id}.png')
    return {'conf': _pair_confusion(pred_path, gt, f'mask of {image_id!r}', num_labels, ignore)}

  totals = sum_confusions(one, ids, workers, per_image=per_image)
  return totals.get('conf', np.zeros((num_labels,) * 2, np.int64))


def evaluate_split(pred_dir, split, num_labels, ids=None, ignore=255, workers=None):
  """Scores `<pred_dir>/<id>.png` against the split's masks (every image, or the given ids)."""
  conf = split_confusion(pred_dir, split, num_labels, ids, ignore, workers)
  return {**confusion.scores(conf), 'num_images': len(split.ids if ids is None else ids)}


def evaluate_dirs(pred_dir, gt_dir, num_labels=None, ids=None, ignore=255, workers=None,
                  per_image=None):
  """Scores every `<gt_dir>/<id>.png` (or the given ids) against `<pred_dir>/<id>.png`.

  num_labels None: 1 + the largest label seen in either folder (classes absent from both have no
  IoU and do not count in the mean, so this gives the mIoU a full class count would). per_image:
  sum_confusions', filled under 'conf' by image id.
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

  conf = sum_confusions(one, ids, workers, per_image=per_image)['conf']
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
