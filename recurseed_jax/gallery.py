"""The report's gallery: which images of a split it shows, and the figure of each.

A split's images are ranked by the per-image mIoU of its final product (scoring.sum_confusions'
per_image), and the gallery shows the per_group worst, median and best of them, then num_fixed
evenly spaced ones: the failures, the typical case and the successes of this run, and a few
images that are the same from run to run. Each figure (panels.labelled_panel) shows the image
(and, on train, the RecurSeed seed's heat map of each kept class) over the label map of every
product with its IoU, the truth, and a legend of the classes present.
"""

import concurrent.futures as cf
import dataclasses
import math
import os
from typing import Any, Callable, Optional

import numpy as np

from recurseed_jax import infer
from recurseed_jax import io_utils
from recurseed_jax import panels
from recurseed_jax.stages import evaluate as evaluate_stage
from recurseed_jax.stages import products


def pick_samples(ious, per_group=2, num_fixed=2):
  """[(index, group)]: the `per_group` worst, median and best images by IoU, then `num_fixed`
  evenly spaced others ('fixed'). Within and across the ranked groups IoUs ascend; images
  without an IoU (NaN) are never ranked. No image is picked twice."""
  ious = np.asarray(ious, np.float64)
  valid = np.flatnonzero(~np.isnan(ious))
  order = valid[np.argsort(ious[valid], kind='stable')]
  k = min(int(per_group), len(order))
  start = max(0, (len(order) - k) // 2)
  out, taken = [], set()
  for group, part in (('worst', order[:k]), ('median', order[start:start + k]),
                      ('best', order[len(order) - k:])):
    for i in part.tolist() if k else []:
      if i not in taken:
        taken.add(i)
        out.append((i, group))
  n = len(ious)
  if num_fixed and n:
    for i in np.unique(np.linspace(0, n - 1, int(num_fixed)).round().astype(int)).tolist():
      if i not in taken:
        taken.add(i)
        out.append((i, 'fixed'))
  return out


@dataclasses.dataclass
class Part:
  """One split's gallery. ious: {product: float [N]} in split order (empty without truth);
  ranked_by: the product it is ranked by (None: an even sample); titles: {product: short title};
  draw(i, caption) -> uint8 figure."""
  name: str
  split: Any
  ious: dict
  ranked_by: Optional[str]
  titles: dict
  draw: Callable


def iou_array(by_item, items):
  """float [N] of `{item: iou}` (sum_confusions' per_image) in the order of `items`."""
  return np.array([by_item.get(i, math.nan) for i in items], np.float64)


def iou_text(v):
  return 'IoU -' if v is None or math.isnan(v) else f'IoU {100 * v:.1f}%'


def figures(part, per_group, num_fixed):
  """[(image id, group, iou or None, PNG bytes)] of the images the part's gallery shows."""
  final = part.ious.get(part.ranked_by)
  if final is None:  # nothing scored: an even sample of as many images
    picks = [(i, 'sample') for i, _ in pick_samples(np.full(len(part.split), np.nan), 0,
                                                    3 * per_group + num_fixed)]
  else:
    picks = pick_samples(final, per_group, num_fixed)

  def one(pick):
    i, group = pick
    v = None if final is None else float(final[i])
    caption = f'{part.split.ids[i]}  ·  {group}'
    if final is not None:
      caption += f'  ·  {part.titles[part.ranked_by]} {iou_text(v)}'
    return part.split.ids[i], group, v, panels.encode_png(part.draw(i, caption))

  with cf.ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:  # PNG encoding: no GIL
    return list(pool.map(one, picks))


def _product_tiles(maps, titles, ious, i):
  return [panels.label_tile(f'{titles[k]}\n{iou_text(ious[k][i] if k in ious else None)}', m)
          for k, m in maps.items()]


def _figure(names, rows, maps, gt, caption):
  """The rows of tiles, the truth last, the legend of every label shown."""
  if gt is not None:
    rows[-1].append(panels.label_tile('ground truth', gt))
  legend = panels.legend_entries(names, gt, *maps.values())
  return panels.labelled_panel(rows, legend, caption)


def train_drawer(ctx, train, names, masks, titles, ious, max_heats=4):
  """draw(i, caption): the image and the RecurSeed seed of (at most max_heats of) its classes
  over each seed kind's and each pseudo mask's label map (`masks` [(key, folder)]) and the truth."""

  def draw(i, caption):
    image_id = train.ids[i]
    image = np.asarray(train.image(i))
    seed = products.load_seed(ctx, image_id)
    top = [panels.image_tile('image', image)]
    for k, c in enumerate(seed['classes'].tolist()[:max_heats]):
      top.append(panels.heat_tile(f'RecurSeed seed\n{names[c + 1]}', image,
                                  infer.dequantize(seed['rs'][..., k])))
    maps = evaluate_stage.train_label_maps(ctx, image_id, masks)
    gt = train.mask(i) if train.has_masks else None
    return _figure(names, [top, _product_tiles(maps, titles, ious, i)], maps, gt, caption)

  return draw


def prediction_drawer(split, names, pred_dirs, titles, ious, image_fn=None):
  """draw(i, caption): the image (`image_fn(i)`, if given), each folder's prediction of
  `pred_dirs` {product: folder} and the truth; sizes that differ are an error naming the id."""

  def draw(i, caption):
    image_id = split.ids[i]
    maps = {}
    for key, folder in pred_dirs.items():
      path = os.path.join(folder, f'{image_id}.png')
      if not os.path.exists(path):
        raise FileNotFoundError(f'missing prediction {path}')
      maps[key] = io_utils.load_mask_png(path)
    gt = split.mask(i) if split.has_masks else None
    image = np.asarray(image_fn(i)) if image_fn else None
    first = os.path.join(next(iter(pred_dirs.values())), f'{image_id}.png')
    hw = maps[next(iter(maps))].shape
    for what, a in (('image', image), ('ground truth', gt)):
      if a is not None and a.shape[:2] != hw:
        raise ValueError(f'size mismatch: the {what} of {image_id!r} is {a.shape[:2]} (H, W), '
                         f'the prediction {first} is {hw}')
    tiles = [panels.image_tile('image', image)] if image is not None else []
    return _figure(names, [tiles + _product_tiles(maps, titles, ious, i)], maps, gt, caption)

  return draw
