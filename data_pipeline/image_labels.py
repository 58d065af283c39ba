"""Image-level labels (float32 [N, C] multi-hot) from annotations: VOC-style XML or the masks.

WSSS trains on these labels alone, so a file that names an unknown class is an error naming the
file, never a silent zero. Both readers (VOC, COCO's authors' layout) parse XML the same way;
where a layout has no XML, the classes present in each mask are the labels.
"""

import xml.etree.ElementTree as ET

import numpy as np

from data_pipeline import thread_pool


def normalize_name(name):
  """Class names compare without case, spaces or underscores ('Traffic_light' = 'traffic light')."""
  return ''.join(name.lower().replace('_', ' ').split())


def xml_object_names(path):
  """The <object><name> entries of a VOC-style annotation file."""
  try:
    root = ET.parse(path).getroot()
  except FileNotFoundError:
    raise FileNotFoundError(f'annotation file {path} is missing') from None
  except ET.ParseError as e:
    raise ValueError(f'cannot parse annotation {path}: {e}') from e
  return [(obj.findtext('name') or '').strip() for obj in root.iter('object')]


def labels_from_xml(paths, class_names, workers=0):
  """float32 [N, C] image labels from the object names of VOC-style XML files."""
  index = {normalize_name(n): c for c, n in enumerate(class_names)}

  def one(path):
    row = np.zeros(len(class_names), np.float32)
    for name in xml_object_names(path):
      c = index.get(normalize_name(name))
      if c is None:
        raise ValueError(f'annotation {path} names an object {name!r} that is not one of the '
                         f'{len(class_names)} classes ({", ".join(class_names[:4])}, ...)')
      row[c] = 1.0
    return row

  rows = thread_pool.parallel_map(one, paths, workers, 'labels from xml')
  return np.stack(rows) if rows else np.zeros((0, len(class_names)), np.float32)


def labels_from_masks(split, workers=0):
  """float32 [N, C] image labels: the classes present in each (checked) mask of a FileSplit."""
  c = split.num_classes

  def one(i):
    present = np.unique(split.mask(i))
    row = np.zeros(c, np.float32)
    row[present[(present >= 1) & (present <= c)].astype(np.int64) - 1] = 1.0
    return row

  rows = thread_pool.parallel_map(one, range(len(split)), workers, 'labels from masks')
  return np.stack(rows) if rows else np.zeros((0, c), np.float32)
