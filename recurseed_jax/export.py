"""Visual overlays (image | seed heat | prediction | ground truth), the VOC submission tree and
label-map PNGs in the format other tools expect (VOC palette or 8-bit grey, e.g. COCO 0..80)."""

import os
import shutil
import tarfile

import numpy as np
from PIL import Image

from recurseed_jax import io_utils

VOC_RESULTS_SUBDIR = os.path.join('results', 'VOC2012', 'Segmentation', 'comp6_test_cls')
MASK_FORMATS = ('palette', 'gray')


def jet(x):
  """A jet-like ramp: [..] floats in [0, 1] -> uint8 [.., 3] (blue, cyan, yellow, red)."""
  x = np.clip(np.asarray(x, np.float32), 0.0, 1.0)[..., None]
  centres = np.array([0.75, 0.5, 0.25], np.float32)  # where r, g, b peak
  rgb = np.clip(1.5 - np.abs(4.0 * (x - centres)), 0.0, 1.0)
  return (255.0 * rgb + 0.5).astype(np.uint8)


def _blend(image, colour, alpha=0.5):
  out = (1.0 - alpha) * image.astype(np.float32) + alpha * colour.astype(np.float32)
  return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def overlay_panel(image, heat, pred, gt=None):
  """Side-by-side uint8 [H, k * W, 3]: image, heat map, prediction and (if given) ground truth.

  Args:
    image: uint8 [H, W, 3].
    heat: float [H, W] in [0, 1] (e.g. the seed's max foreground score), jet colours blended 50%.
    pred: uint8 [H, W] label map, VOC colours blended 50%.
    gt: optional uint8 [H, W] label map, rendered like `pred`.
  """
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
    raise ValueError(f'image must be uint8 [H, W, 3], got {image.dtype} {image.shape}')
  hw = image.shape[:2]
  if np.shape(heat) != hw:
    raise ValueError(f'heat shape {np.shape(heat)} != image shape {hw}')
  palette = io_utils.voc_palette()
  tiles = [image, _blend(image, jet(heat))]
  for name, labels in (('pred', pred), ('gt', gt)):
    if labels is None:
      continue
    labels = np.asarray(labels)
    if labels.shape != hw:
      raise ValueError(f'{name} shape {labels.shape} != image shape {hw}')
    tiles.append(_blend(image, palette[labels.astype(np.uint8)]))
  return np.concatenate(tiles, axis=1)


def write_overlays(out_dir, panels_iter):
  """Saves each (name, uint8 [H, W, 3] panel) as `<out_dir>/<name>.png`; returns the paths."""
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
