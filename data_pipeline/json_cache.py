"""What is slow to recompute from a dataset folder, kept once as `<cache_dir>/<name>-<key>.json`.

Labels read from masks or XML and scans for corrupt files take minutes on COCO; the key is a
digest of what they depend on (root, layout, split, the id list), so a changed folder gets a new
file and a later run reads one small one. Names and format are stable: old caches stay valid.
"""

import hashlib
import json
import os

import numpy as np

from recurseed_jax import io_utils


def cache_dir(config, workdir):
  """Where label caches and scans go: config.data.cache_dir or <workdir>/data."""
  return config.data.cache_dir or os.path.join(workdir, 'data')


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
