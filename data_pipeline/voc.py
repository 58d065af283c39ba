"""PASCAL VOC 2012 (+ SBD) in either layout users keep it in (METHOD.md section 7).

  authors':  VOC2012/{train,train_aug,validation}/{image,mask,xml}, VOC2012/test/image
  standard:  VOCdevkit/VOC2012/{JPEGImages,Annotations,SegmentationClass,ImageSets/Segmentation}
             plus SBD's SegmentationClassAug and the train_aug list (10,582 images)

Logical splits: 'train' = train_aug (what RecurSeed trains on and makes pseudo masks for), 'val'
(1,449), 'test' (1,456, images only). Image labels come from the XML object names, or from the
masks where there is no XML. `detect` finds the layout under config.data.root.
"""

import dataclasses
import os

import numpy as np

from data_pipeline import image_ids
from data_pipeline import image_labels
from data_pipeline import json_cache
from data_pipeline import required_paths
from data_pipeline import splits
from recurseed_jax import io_utils

CLASS_NAMES = ('aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair',
               'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant',
               'sheep', 'sofa', 'train', 'tvmonitor')
NUM_CLASSES = len(CLASS_NAMES)
PALETTE = io_utils.voc_palette()  # uint8 [256, 3]: label -> colour of VOC's masks
SPLITS = ('train', 'val', 'test')

AUTHORS, STANDARD = 'authors', 'standard'
LAYOUTS = {
    AUTHORS: "the authors' layout: VOC2012/{train,train_aug,validation}/{image,mask,xml} and "
             'VOC2012/test/image',
    STANDARD: 'the standard layout: VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,Annotations,'
              "ImageSets/Segmentation} plus SBD's SegmentationClassAug and train_aug list",
}
# Folder of each logical split in the authors' layout.
_AUTHORS_FOLDERS = dict(train='train_aug', val='validation', test='test')


@dataclasses.dataclass(frozen=True)
class Layout:
  kind: str  # AUTHORS or STANDARD
  base: str  # the VOC2012 folder

  def describe(self):
    return f'PASCAL VOC 2012 in {LAYOUTS[self.kind]}, at {self.base}'


def _known_layouts():
  return '; '.join(LAYOUTS.values())


def detect(root):
  """The layout under `root` (the VOC2012 folder, or a folder above it); errors name the paths."""
  root = required_paths.check_root(root, 'PASCAL VOC 2012', LAYOUTS)
  looked = []
  for base in (root, os.path.join(root, 'VOC2012')):
    marks = [os.path.join(base, f, 'image') for f in ('train_aug', 'validation', 'train')]
    looked += marks
    if any(os.path.isdir(m) for m in marks):
      return Layout(AUTHORS, base)
  for base in (root, os.path.join(root, 'VOC2012'), os.path.join(root, 'VOCdevkit', 'VOC2012')):
    mark = os.path.join(base, 'JPEGImages')
    looked.append(mark)
    if os.path.isdir(mark):
      return Layout(STANDARD, base)
  raise FileNotFoundError(f'no PASCAL VOC 2012 under {root}: looked for {", ".join(looked)}. '
                          f'Known layouts: {_known_layouts()}.')


def _require(path, what, layout):
  if not os.path.exists(path):
    raise FileNotFoundError(f'{what} not found: {path} ({layout.describe()}). Known layouts: '
                            f'{_known_layouts()}.')
  return path


def _labels(layout, split_name, split, xml_paths, cache_dir, workers):
  key = json_cache.cache_key(layout.kind, layout.base, split_name, split.ids, xml_paths is not None)
  if xml_paths is not None:
    compute = lambda: image_labels.labels_from_xml(xml_paths, CLASS_NAMES, workers)
  elif split.has_masks:
    compute = lambda: image_labels.labels_from_masks(split, workers)
  else:
    return np.zeros((len(split), NUM_CLASSES), np.float32)  # test: labels unknown
  labels = json_cache.labels_cached(cache_dir, f'labels-voc12-{split_name}', key, NUM_CLASSES,
                                    compute)
  empty = np.flatnonzero(~labels.any(axis=1)) if xml_paths is not None else []
  if len(empty):  # every VOC image has an object: the file is cut short or not VOC's
    raise splits.BadFileError(
        f'annotation {xml_paths[empty[0]]} lists no <object> ({len(empty)} such file(s) in VOC '
        f'{split_name}); restore it, or remove the xml folder to take the labels from the masks')
  return labels


def _authors_split(layout, name):
  folder = _require(os.path.join(layout.base, _AUTHORS_FOLDERS[name]), f'VOC {name} split',
                    layout)
  image_dir = _require(os.path.join(folder, 'image'), f'VOC {name} images', layout)
  files = image_ids.stems(image_dir)
  ids = sorted(files)
  images = [os.path.join(image_dir, files[i]) for i in ids]
  mask_dir, xml_dir = os.path.join(folder, 'mask'), os.path.join(folder, 'xml')
  masks = ([os.path.join(mask_dir, f'{i}.png') for i in ids]
           if os.path.isdir(mask_dir) and name != 'test' else None)
  xmls = [os.path.join(xml_dir, f'{i}.xml') for i in ids] if os.path.isdir(xml_dir) else None
  return ids, images, masks, xmls, image_dir


def _train_aug_ids(layout):
  """The 10,582 train_aug ids: from a list file, else SegmentationClassAug's masks less val."""
  base = layout.base
  for path in (os.path.join(base, 'ImageSets', 'Segmentation', 'train_aug.txt'),
               os.path.join(base, 'ImageSets', 'SegmentationAug', 'train_aug.txt'),
               os.path.join(base, 'train_aug.txt')):
    if os.path.exists(path):
      return image_ids.read_id_list(path), path
  aug_dir = _aug_dir(layout)
  val = set(image_ids.read_id_list(_require(
      os.path.join(base, 'ImageSets', 'Segmentation', 'val.txt'), 'VOC val list', layout)))
  return sorted(set(image_ids.stems(aug_dir, ('.png',))) - val), aug_dir


def _aug_dir(layout):
  for path in (os.path.join(layout.base, 'SegmentationClassAug'),
               os.path.join(os.path.dirname(layout.base), 'SegmentationClassAug')):
    if os.path.isdir(path):
      return path
  raise FileNotFoundError(
      f"VOC train (train_aug) needs SBD's masks, SegmentationClassAug: looked for "
      f'{os.path.join(layout.base, "SegmentationClassAug")} ({layout.describe()}). Known layouts: '
      f'{_known_layouts()}.')


def _standard_split(layout, name):
  base = layout.base
  if name == 'train':
    ids, where = _train_aug_ids(layout)
    mask_dir = _aug_dir(layout)
  else:
    where = _require(os.path.join(base, 'ImageSets', 'Segmentation', f'{name}.txt'),
                     f'VOC {name} list', layout)
    ids = image_ids.read_id_list(where)
    mask_dir = None if name == 'test' else os.path.join(base, 'SegmentationClass')
  ids = sorted(set(ids))
  images = [os.path.join(base, 'JPEGImages', f'{i}.jpg') for i in ids]
  masks = None if mask_dir is None else [os.path.join(mask_dir, f'{i}.png') for i in ids]
  xml_dir = os.path.join(base, 'Annotations')
  xmls = ([os.path.join(xml_dir, f'{i}.xml') for i in ids]
          if os.path.isdir(xml_dir) and name != 'test' else None)
  return ids, images, masks, xmls, where


def load_split(layout, name, cache_dir=None, workers=0):
  """The logical split `name` ('train', 'val', 'test') as a FileSplit with its labels."""
  if name not in SPLITS:
    raise ValueError(f'unknown VOC split {name!r}; known: {", ".join(SPLITS)}')
  read = _authors_split if layout.kind == AUTHORS else _standard_split
  ids, images, masks, xmls, where = read(layout, name)
  if not ids:
    raise ValueError(f'VOC {name} split is empty: no images in {where} ({layout.describe()})')
  # Every listed file, now rather than when a later stage reaches it (a stat each: fast).
  required_paths.check_exist(images + (masks or []), f'VOC {name} ({where}; {layout.describe()})')
  split = splits.FileSplit(ids, images, np.zeros((len(ids), NUM_CLASSES)), masks,
                           num_classes=NUM_CLASSES)
  split.labels = _labels(layout, name, split, xmls, cache_dir, workers)
  return split
