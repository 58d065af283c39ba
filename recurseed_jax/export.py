"""Overlay figures as PNG files (drawn by panels.py), the VOC submission tree and label-map PNGs
in the format other tools expect (VOC palette or 8-bit grey, e.g. COCO 0..80)."""

import os
import shutil
import tarfile

import numpy as np
from PIL import Image

from recurseed_jax import io_utils

VOC_RESULTS_SUBDIR = os.path.join('results', 'VOC2012', 'Segmentation', 'comp6_test_cls')
MASK_FORMATS = ('palette', 'gray')


def write_overlays(out_dir, panels_iter):
  """Saves each (name, uint8 [H, W, 3] figure) as `<out_dir>/<name>.png`; returns the paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for name, panel in panels_iter:
    name = name if name.endswith('.png') else f'{name}.png'
    path = os.path.join(out_dir, name)
    with io_utils.atomic_path(path) as tmp:
      Image.fromarray(np.ascontiguousarray(panel, dtype=np.uint8)).save(tmp, format='PNG')
    paths.append(path)
  return paths


def voc_submission_tree(pred_dir, out_root, ids=None):
  """Copies predictions into the VOC evaluation server's layout and tars them.

  Writes `<out_root>/results/VOC2012/Segmentation/comp6_test_cls/<id>.png` and
  `<out_root>/results.tar.gz` (members `results/...`, only the given ids). Returns the tar path.
  """
  if ids is None:
    ids = sorted(n[:-4] for n in os.listdir(pred_dir)
                 if n.endswith('.png') and not io_utils.is_temp_name(n))
  cls_dir = os.path.join(out_root, VOC_RESULTS_SUBDIR)
  os.makedirs(cls_dir, exist_ok=True)
  members = []
  for image_id in ids:
    src = os.path.join(pred_dir, f'{image_id}.png')
    if not os.path.exists(src):
      raise FileNotFoundError(f'missing prediction {src}')
    dst = os.path.join(cls_dir, f'{image_id}.png')
    with io_utils.atomic_path(dst) as tmp:
      shutil.copyfile(src, tmp)
    members.append((dst, os.path.join(VOC_RESULTS_SUBDIR, f'{image_id}.png')))
  tar_path = os.path.join(out_root, 'results.tar.gz')
  with io_utils.atomic_path(tar_path) as tmp:
    with tarfile.open(tmp, 'w:gz') as tar:
      for path, arcname in members:
        tar.add(path, arcname=arcname)
  return tar_path


def write_masks(src_dir, out_dir, fmt='palette', ids=None):
  """Rewrites the label-map PNGs of `src_dir` into `out_dir` as palette ('P', VOC colours) or
  8-bit grey ('L') PNGs; the values (class ids, 255 ignore) are unchanged. Returns the paths."""
  if fmt not in MASK_FORMATS:
    raise ValueError(f'mask format {fmt!r} is not one of: {", ".join(MASK_FORMATS)}')
  if not os.path.isdir(src_dir):
    raise FileNotFoundError(f'no folder {src_dir} to export masks from')
  if ids is None:
    ids = sorted(n[:-4] for n in os.listdir(src_dir)
                 if n.endswith('.png') and not io_utils.is_temp_name(n))
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for image_id in ids:
    mask = io_utils.load_mask_png(os.path.join(src_dir, f'{image_id}.png'))
    path = os.path.join(out_dir, f'{image_id}.png')
    if fmt == 'palette':
      io_utils.save_palette_png(path, mask)
    else:
      with io_utils.atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(mask)).save(tmp, format='PNG')  # 2-D uint8: 'L'
    paths.append(path)
  return paths
