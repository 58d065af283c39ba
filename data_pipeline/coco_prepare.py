"""Rasterises COCO 2014's instance annotations into semantic masks, once (needs pycocotools).

    python -m data_pipeline.coco_prepare --root /data/coco [--out DIR] [--workers 16]

reads `<root>/annotations/instances_{train,val}2014.json` and writes, for every image of
`<root>/{train,val}2014/`, `<out>/{train,val}2014/<id>.png` (a VOC-palette PNG: 0 background,
1..80 the 80 categories in id order, 255 crowd regions; annotations are drawn in file order, so a
later one covers an earlier one) and `<out>/{train,val}2014_labels.json` ({id: [classes present,
0-based]}). Default out: `<root>/semantic_masks`. Resumable: existing PNGs are kept (read back for
their labels); every file is written atomically; with workers > 1 the work runs in a 'spawn'
process pool. The COCO provider (data_pipeline/coco.py) runs this lazily when the labels file is
missing. Annotations are checked first (`read_instances`, `checked_annotations`): a malformed
one is an error naming the file and its id; polygons reaching out of their image are clipped or
left out, and counted in the log. On the command line a user error (a missing folder, an
annotation file cut short or of another kind) ends in one line naming it, exit status 2.
"""

import argparse
import collections
import functools
import json
import multiprocessing
import os
import sys
import warnings

import numpy as np
from tqdm import tqdm

from data_pipeline import coco_classes
from data_pipeline import image_labels
from recurseed_jax import io_utils

FOLDERS = ('train2014', 'val2014')
CROWD = 255


def mask_api():
  """pycocotools.mask, or an error that says how to get it."""
  try:
    from pycocotools import mask as mask_utils
  except ImportError as e:
    raise ImportError('the COCO prepare step needs pycocotools to rasterise the polygons of '
                      'instances_*.json: pip install pycocotools') from e
  return mask_utils


def annotation_mask(segmentation, height, width):
  """bool [H, W] of one annotation (polygons, uncompressed or compressed RLE)."""
  api = mask_api()
  if isinstance(segmentation, list):  # polygons: one RLE each, merged
    rle = api.merge(api.frPyObjects(segmentation, height, width))
  elif isinstance(segmentation.get('counts'), list):  # uncompressed RLE (crowd regions)
    rle = api.frPyObjects(segmentation, height, width)
  else:
    rle = segmentation
  with warnings.catch_warnings():  # pycocotools' numpy-2 copy= notice, once per annotation
    warnings.simplefilter('ignore', DeprecationWarning)
    return api.decode(rle).astype(bool)


def rasterize(anns, height, width, label_of):
  """uint8 [H, W] semantic mask: annotations in order, crowd regions 255, background 0."""
  mask = np.zeros((height, width), np.uint8)
  for ann in anns:
    region = annotation_mask(ann['segmentation'], height, width)
    mask[region] = CROWD if ann.get('iscrowd') else label_of[ann['category_id']]
  return mask


def _present(mask, num_classes):
  values = np.unique(mask)
  return [int(v) - 1 for v in values if 1 <= v <= num_classes]


def _job(task, label_of):
  """Worker: writes one mask (unless it exists) and returns (id, classes present)."""
  image_id, path, height, width, anns = task
  if os.path.exists(path):
    mask = io_utils.load_mask_png(path)
  else:
    mask = rasterize(anns, height, width, label_of)
    io_utils.save_palette_png(path, mask)
  return image_id, _present(mask, len(label_of))


def category_labels(categories, class_names=None):
  """{category id: label 1..K} in id order; checks the names against `class_names`."""
  cats = sorted(categories, key=lambda c: c['id'])
  if class_names is not None:
    names = [c['name'] for c in cats]
    norm = image_labels.normalize_name
    if [norm(n) for n in names] != [norm(n) for n in class_names]:
      raise ValueError(f'the annotation categories ({len(names)}: {", ".join(names[:4])}, ...) '
                       f'are not the {len(class_names)} COCO classes this project expects')
  return {c['id']: k + 1 for k, c in enumerate(cats)}


def _polygon_reach(poly, height, width, slack=1.0):
  """'in', 'partly' or 'out': where a flat [x0, y0, x1, y1, ...] polygon lies in its image."""
  xy = np.asarray(poly, np.float64).reshape(-1, 2)
  inside = ((xy[:, 0] >= -slack) & (xy[:, 0] <= width + slack) &
            (xy[:, 1] >= -slack) & (xy[:, 1] <= height + slack))
  if inside.all():
    return 'in'
  x0, y0 = xy.min(axis=0)
  x1, y1 = xy.max(axis=0)
  return 'out' if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height else 'partly'


def checked_annotations(data, label_of, ann_file, log=print):
  """The annotations of an instances JSON, checked; errors name the file and annotation id.

  A malformed polygon (odd length, under 3 points) or an unknown category is an error. Polygons
  reaching out of their image (by more than a pixel) are counted and logged: those partly out are
  clipped when rasterised, those wholly out are left out (they would draw nothing).
  """
  sizes = {img['id']: (img['height'], img['width']) for img in data['images']}
  partly, out = [], []
  for ann in data['annotations']:
    where = f'{ann_file}: annotation {ann.get("id")} (image {ann.get("image_id")})'
    if ann.get('category_id') not in label_of:
      raise ValueError(f'{where} has category_id {ann.get("category_id")}, not one of the '
                       'categories of the file')
    if ann.get('image_id') not in sizes:
      continue  # an image the file does not list: nothing to draw it on
    seg = ann.get('segmentation')
    if isinstance(seg, dict) and 'counts' in seg and 'size' in seg:
      yield ann  # RLE: sized to its image by construction
      continue
    if not isinstance(seg, list):
      raise ValueError(f'{where} has a segmentation that is neither polygons (a list) nor RLE '
                       '(counts and size)')
    keep = []
    for poly in seg:
      if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
        got = f'{len(poly)} numbers' if isinstance(poly, list) else repr(poly)
        raise ValueError(f'{where} has a polygon of {got}; a polygon is x, y pairs, at least 3 '
                         'points')
      reach = _polygon_reach(poly, *sizes[ann['image_id']])
      if reach != 'in':
        (out if reach == 'out' else partly).append(ann.get('id'))
      if reach != 'out':
        keep.append(poly)
    if keep:
      yield dict(ann, segmentation=keep)
  if partly or out:
    log(f'data: {ann_file}: {len(partly)} polygon(s) reach out of their image and were clipped, '
        f'{len(out)} lie wholly outside and were left out (annotation ids '
        f'{sorted(set(partly + out))[:5]})')


# The fields this step reads of each entry of an instances JSON.
_FIELDS = dict(images=('id', 'file_name', 'height', 'width'), categories=('id', 'name'),
               annotations=('image_id', 'category_id', 'segmentation'))


def read_instances(ann_file):
  """The parsed instances JSON, its entries checked for the fields read here; errors name it.

  A file cut short or of another kind would otherwise fail deep in the rasterising (a KeyError in
  a worker process); checked here, it is one error naming the file and the entry.
  """
  try:
    with open(ann_file, 'rb') as f:
      data = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f'cannot parse COCO annotations {ann_file}: {e} (cut short? fetch it '
                     'again)') from e
  for key, fields in _FIELDS.items():
    entries = data.get(key) if isinstance(data, dict) else None
    if not isinstance(entries, list):
      raise ValueError(f'{ann_file} is not a COCO instances file: it has no {key!r} list')
    for k, entry in enumerate(entries):
      lacks = [f for f in fields if f not in entry] if isinstance(entry, dict) else fields
      if lacks:
        raise ValueError(f'{ann_file}: {key}[{k}] lacks {", ".join(lacks)} (a COCO instances '
                         f'file gives every entry of {key!r} {", ".join(fields)})')
  return data


def labels_path(out_dir, folder):
  return os.path.join(out_dir, f'{folder}_labels.json')


def prepare_split(root, folder, out_dir, workers=0, class_names=None, log=print):
  """Writes the masks and the labels file of one folder ('train2014' / 'val2014'); returns it."""
  done = labels_path(out_dir, folder)
  if os.path.exists(done):
    return done
  mask_api()  # fail before the slow JSON load when pycocotools is missing
  ann_file = os.path.join(root, 'annotations', f'instances_{folder}.json')
  if not os.path.exists(ann_file):
    raise FileNotFoundError(f'COCO annotations not found: {ann_file} (the COCO 2014 layout as '
                            'distributed: train2014/, val2014/, annotations/instances_*.json)')
  log(f'data: rasterising COCO {folder} masks from {ann_file} into {out_dir}/{folder} (once)')
  data = read_instances(ann_file)
  label_of = category_labels(data['categories'], class_names)
  by_image = collections.defaultdict(list)
  for ann in checked_annotations(data, label_of, ann_file, log):
    by_image[ann['image_id']].append(ann)  # file order: later ones are drawn over earlier ones
  os.makedirs(os.path.join(out_dir, folder), exist_ok=True)
  tasks = []
  for img in sorted(data['images'], key=lambda im: im['file_name']):
    stem = os.path.splitext(img['file_name'])[0]
    path = os.path.join(out_dir, folder, f'{stem}.png')
    tasks.append((stem, path, img['height'], img['width'], by_image.get(img['id'], [])))
  del data, by_image
  job = functools.partial(_job, label_of=label_of)
  bar = tqdm(total=len(tasks), desc=f'coco masks {folder}', unit='img', dynamic_ncols=True)
  labels = {}
  try:
    if workers > 1:
      with multiprocessing.get_context('spawn').Pool(workers) as pool:
        for image_id, present in pool.imap(job, tasks, chunksize=16):
          labels[image_id] = present
          bar.update(1)
    else:
      for task in tasks:
        image_id, present = job(task)
        labels[image_id] = present
        bar.update(1)
  finally:
    bar.close()
  io_utils.save_json(done, labels, indent=None)
  return done


class _Parser(argparse.ArgumentParser):
  """argparse whose usage errors are one line and exit 2, like every other error of main."""

  def error(self, message):
    self.exit(2, f'error: {message} (see --help)\n')


def _one_line(error):
  return ' '.join(str(error).split())


def main(argv=None):
  """The command line; a user error (missing folder, bad annotations...) is one line, exit 2."""
  parser = _Parser(description=__doc__.split('\n')[0])
  parser.add_argument('--root', required=True, help='holds train2014/, val2014/, annotations/')
  parser.add_argument('--out', default='', help='mask folder (default: <root>/semantic_masks)')
  parser.add_argument('--folders', default=','.join(FOLDERS), help='comma-separated')
  parser.add_argument('--workers', type=int, default=os.cpu_count() or 1,
                      help='processes (0 or 1: in this process)')
  args = parser.parse_args(argv)
  if not os.path.isdir(args.root):
    print(f'error: --root {args.root} is not a folder; it should hold train2014/, val2014/ and '
          'annotations/instances_{train,val}2014.json', file=sys.stderr)
    return 2
  out = args.out or os.path.join(args.root, 'semantic_masks')
  try:
    for folder in [f for f in args.folders.split(',') if f]:
      print(prepare_split(args.root, folder, out, args.workers, coco_classes.CLASS_NAMES))
  except (ImportError, OSError, ValueError) as e:  # OSError: unreadable, unwritable, no space
    print(f'error: {_one_line(e)}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
