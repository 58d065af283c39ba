"""COCO 2014 in either layout users keep it in (METHOD.md section 7).

  authors':     COCO2014/{train,validation}/{image,mask,xml}
  distributed:  train2014/, val2014/, annotations/instances_{train,val}2014.json; the semantic
                masks are rasterised once by data_pipeline/coco_prepare.py (run lazily here)

Logical splits: 'train' and 'val'. Labels: classes present in the XML (authors') or in the masks.
As in the WSSS literature, images without any class are left out (train 82,081 of 82,783 images,
val 40,137 of 40,504); the count is logged.
"""

import dataclasses
import os

import numpy as np

from data_pipeline import coco_classes
from data_pipeline import coco_prepare
from data_pipeline import image_ids
from data_pipeline import image_labels
from data_pipeline import json_cache
from data_pipeline import required_paths
from data_pipeline import splits

CLASS_NAMES = coco_classes.CLASS_NAMES
CATEGORY_IDS = coco_classes.CATEGORY_IDS
NUM_CLASSES = coco_classes.NUM_CLASSES
SPLITS = ('train', 'val')

AUTHORS, DISTRIBUTED = 'authors', 'distributed'
LAYOUTS = {
    AUTHORS: "the authors' layout: COCO2014/{train,validation}/{image,mask,xml}",
    DISTRIBUTED: 'the layout as distributed: train2014/, val2014/ and '
                 'annotations/instances_{train,val}2014.json',
}
_FOLDERS = {AUTHORS: dict(train='train', val='validation'),
            DISTRIBUTED: dict(train='train2014', val='val2014')}


@dataclasses.dataclass(frozen=True)
class Layout:
  kind: str  # AUTHORS or DISTRIBUTED
  base: str  # the folder holding the split folders

  def describe(self):
    return f'COCO 2014 in {LAYOUTS[self.kind]}, at {self.base}'


def _known_layouts():
  return '; '.join(LAYOUTS.values())


def detect(root):
  """The layout under `root` (or under root/COCO2014, root/coco); errors name the paths."""
  root = required_paths.check_root(root, 'COCO 2014', LAYOUTS)
  bases = (root, os.path.join(root, 'COCO2014'), os.path.join(root, 'coco'))
  looked = []
  for base in bases:
    marks = [os.path.join(base, f, 'image') for f in ('train', 'validation')]
    looked += marks
    if any(os.path.isdir(m) for m in marks):
      return Layout(AUTHORS, base)
  for base in bases:
    marks = [os.path.join(base, f) for f in ('train2014', 'val2014', 'annotations')]
    looked += marks
    if any(os.path.isdir(m) for m in marks[:2]):
      return Layout(DISTRIBUTED, base)
  raise FileNotFoundError(f'no COCO 2014 under {root}: looked for {", ".join(looked)}. '
                          f'Known layouts: {_known_layouts()}.')


def default_mask_dir(layout):
  return os.path.join(layout.base, 'semantic_masks')


def _require(path, what, layout):
  if not os.path.exists(path):
    raise FileNotFoundError(f'{what} not found: {path} ({layout.describe()}). Known layouts: '
                            f'{_known_layouts()}.')
  return path


def _authors_split(layout, name, cache_dir, workers):
  folder = _require(os.path.join(layout.base, _FOLDERS[AUTHORS][name]), f'COCO {name} split',
                    layout)
  image_dir = _require(os.path.join(folder, 'image'), f'COCO {name} images', layout)
  mask_dir = _require(os.path.join(folder, 'mask'), f'COCO {name} masks', layout)
  files = image_ids.stems(image_dir)
  ids = sorted(files)
  if not ids:
    raise ValueError(f'COCO {name} split is empty: no images in {image_dir}')
  split = splits.FileSplit(ids, [os.path.join(image_dir, files[i]) for i in ids],
                           np.zeros((len(ids), NUM_CLASSES)),
                           [os.path.join(mask_dir, f'{i}.png') for i in ids],
                           num_classes=NUM_CLASSES)
  required_paths.check_exist(split.mask_paths, f'COCO {name} ({mask_dir}; {layout.describe()})')
  xml_dir = os.path.join(folder, 'xml')
  has_xml = os.path.isdir(xml_dir)
  if has_xml:
    xmls = [os.path.join(xml_dir, f'{i}.xml') for i in ids]
    compute = lambda: image_labels.labels_from_xml(xmls, CLASS_NAMES, workers)
  else:
    compute = lambda: image_labels.labels_from_masks(split, workers)
  key = json_cache.cache_key(layout.kind, layout.base, name, ids, has_xml)
  split.labels = json_cache.labels_cached(cache_dir, f'labels-coco14-{name}', key, NUM_CLASSES,
                                          compute)
  return split, image_dir


def _distributed_split(layout, name, mask_dir, workers, log):
  folder = _FOLDERS[DISTRIBUTED][name]
  image_dir = _require(os.path.join(layout.base, folder), f'COCO {name} images', layout)
  mask_dir = mask_dir or default_mask_dir(layout)
  labels_file = coco_prepare.prepare_split(layout.base, folder, mask_dir, workers, CLASS_NAMES,
                                           log=log)
  split = read_prepared(labels_file, image_dir, os.path.join(mask_dir, folder))
  required_paths.check_exist(split.image_paths + split.mask_paths,
                             f'COCO {name} ({labels_file}; {layout.describe()})')
  return split, image_dir


def read_prepared(labels_file, image_dir, mask_dir):
  """The FileSplit of a prepared folder: ids and labels from the labels file of coco_prepare."""
  import json
  with open(labels_file) as f:
    present = json.load(f)
  ids = sorted(present)
  labels = np.zeros((len(ids), NUM_CLASSES), np.float32)
  for i, image_id in enumerate(ids):
    labels[i, present[image_id]] = 1.0
  return splits.FileSplit(ids, [os.path.join(image_dir, f'{i}.jpg') for i in ids], labels,
                          [os.path.join(mask_dir, f'{i}.png') for i in ids],
                          num_classes=NUM_CLASSES)


def load_split(layout, name, cache_dir=None, workers=0, mask_dir='', log=print):
  """The logical split `name` ('train', 'val') as a FileSplit, images without a class left out."""
  if name not in SPLITS:
    raise ValueError(f'unknown COCO split {name!r}; known: {", ".join(SPLITS)} (COCO 2014 has no '
                     'public test masks)')
  if layout.kind == AUTHORS:
    split, where = _authors_split(layout, name, cache_dir, workers)
  else:
    split, where = _distributed_split(layout, name, mask_dir, workers, log)
  keep = np.flatnonzero(split.labels.any(axis=1))
  if len(keep) < len(split):
    log(f'data: COCO {name}: left out {len(split) - len(keep)} of {len(split)} images without '
        'any class')
    split = split.subset(keep)
  if not len(split):
    raise ValueError(f'COCO {name} split is empty: no image with a class in {where}')
  return split
