"""From a dataset folder to a FileSplit: image labels (XML or masks), caches and corrupt-file scans.

The readers of each layout (data_pipeline/voc.py, coco.py) list ids and paths; this module turns
the annotations into label vectors, in a thread pool (decoding and parsing release the GIL or are
short), and caches what is slow to recompute (labels read from masks, scans for corrupt files) as
JSON keyed by the file list, so a later run reads one small file.
"""

import concurrent.futures as cf
import hashlib
import json
import os
import xml.etree.ElementTree as ET

import numpy as np
from tqdm import tqdm

from data_pipeline import splits
from recurseed_jax import io_utils

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')


def workers_or_default(workers):
  return int(workers) if workers and int(workers) > 0 else (os.cpu_count() or 1)


def parallel_map(fn, items, workers, desc):
  """[fn(x) for x in items] in a thread pool, in order, with a progress bar for long lists."""
  items = list(items)
  with cf.ThreadPoolExecutor(workers_or_default(workers)) as pool:
    return list(tqdm(pool.map(fn, items), total=len(items), desc=desc, dynamic_ncols=True,
                     disable=len(items) < 200, leave=False))


def normalize_name(name):
  """Class names compare without case, spaces or underscores ('Traffic_light' = 'traffic light')."""
  return ''.join(name.lower().replace('_', ' ').split())


def stems(folder, extensions=IMAGE_EXTENSIONS):
  """{stem: file name} of the image files in a folder."""
  out = {}
  for name in os.listdir(folder):
    stem, ext = os.path.splitext(name)
    if ext.lower() in extensions and not name.startswith('.'):
      out[stem] = name
  return out


def read_id_list(path):
  """Image ids of a list file; a line is `id` or `/JPEGImages/id.jpg /SegmentationClassAug/id.png`.

  An id may hold spaces (the line less its folders and image extension is the id) and bytes that
  are not UTF-8 (read as os.listdir reads such names, so the two agree).
  """
  ids = []
  with open(path, encoding='utf-8', errors='surrogateescape') as f:
    for line in f:
      line = line.strip()
      if line:
        stem, ext = os.path.splitext(os.path.basename(line))
        ids.append(stem if ext.lower() in IMAGE_EXTENSIONS else os.path.basename(line))
  return ids


def check_exist(paths, where):
  """FileNotFoundError naming the first missing file and how many of `where`'s are missing."""
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    raise FileNotFoundError(f'{len(missing)} of the {len(paths)} files of {where} are missing, '
                            f'first {missing[0]}')


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

  rows = parallel_map(one, paths, workers, 'labels from xml')
  return np.stack(rows) if rows else np.zeros((0, len(class_names)), np.float32)


def labels_from_masks(split, workers=0):
  """float32 [N, C] image labels: the classes present in each (checked) mask of a FileSplit."""
  c = split.num_classes

  def one(i):
    present = np.unique(split.mask(i))
    row = np.zeros(c, np.float32)
    row[present[(present >= 1) & (present <= c)].astype(np.int64) - 1] = 1.0
    return row

  rows = parallel_map(one, range(len(split)), workers, 'labels from masks')
  return np.stack(rows) if rows else np.zeros((0, c), np.float32)


def cache_key(*parts):
  """A short digest of json-able parts (root, layout, split, the id list...)."""
  return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def cached(cache_dir, name, key, compute):
  """compute() once, kept as `<cache_dir>/<name>-<key>.json` (json-able); no cache_dir, no cache."""
  if not cache_dir:
    return compute()
  path = os.path.join(cache_dir, f'{name}-{key}.json')
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  value = compute()
  os.makedirs(cache_dir, exist_ok=True)
  io_utils.save_json(path, value, indent=None)
  return value


def labels_cached(cache_dir, name, key, num_classes, compute):
  """float32 [N, C] labels, computed once and cached as lists of present class indices."""
  def as_lists():
    return [np.flatnonzero(row).tolist() for row in compute()]

  lists = cached(cache_dir, name, key, as_lists)
  labels = np.zeros((len(lists), num_classes), np.float32)
  for i, present in enumerate(lists):
    labels[i, present] = 1.0
  return labels


def find_corrupt(split, workers=0):
  """[(index, message)] of the examples whose image or mask file does not decode.

  Masks with wrong values or sizes are not 'corrupt': they raise, skip_corrupt or not.
  """
  def one(i):
    try:
      split.check(i)
    except splits.CorruptFileError as e:
      return i, str(e)
    return None

  return [r for r in parallel_map(one, range(len(split)), workers, 'scanning for corrupt files')
          if r is not None]


def drop_corrupt(split, cache_dir, key, workers=0, log=print, where=''):
  """The split without its corrupt examples (config.data.skip_corrupt); the scan is cached."""
  bad = cached(cache_dir, 'corrupt', key, lambda: [list(r) for r in find_corrupt(split, workers)])
  if not bad:
    return split
  drop = {i for i, _ in bad}
  log(f'data: skipped {len(bad)} corrupt file(s) of {len(split)} in {where} '
      f'(data.skip_corrupt): {bad[0][1]}' + (' ...' if len(bad) > 1 else ''))
  return split.subset([i for i in range(len(split)) if i not in drop])


def check_root(root, dataset, layouts):
  """config.data.root as an absolute folder, or an error naming it and the known layouts."""
  known = '; '.join(layouts.values())
  if not root:
    raise FileNotFoundError(f'config.data.root is empty: set it to the folder holding {dataset}. '
                            f'Known layouts: {known}.')
  root = os.path.abspath(os.path.expanduser(root))
  if not os.path.isdir(root):
    raise FileNotFoundError(f'config.data.root={root} does not exist. Known layouts: {known}.')
  return root
