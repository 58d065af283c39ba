"""Tiny dataset trees in every layout the readers know (a handful of small images each).

Images are small JPEGs of a few sizes; masks hold rectangles of one or two classes and a 255 band
(as VOC's object borders); the XML files name the classes of the mask, so labels from XML and
from masks agree. Every tree is a pure function of its arguments.
"""

import json
import os

import numpy as np
from PIL import Image

from data_pipeline import coco
from data_pipeline import voc
from recurseed_jax import io_utils

SIZES = ((30, 40), (40, 30), (36, 36))  # (H, W)


def write_jpeg(path, image):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(image).save(path, format='JPEG', quality=95)


def write_grey_png(path, mask):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(mask).save(path, format='PNG')


def write_palette_png(path, mask):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  io_utils.save_palette_png(path, mask)


def write_xml(path, names):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  objects = ''.join(f'<object><name>{n}</name><difficult>0</difficult></object>' for n in names)
  with open(path, 'w') as f:
    f.write(f'<annotation><filename>{os.path.basename(path)}</filename>{objects}</annotation>')


def example(k, num_classes):
  """Image k: (image uint8 [H, W, 3], mask uint8 [H, W], classes 1-based)."""
  rng = np.random.default_rng(k)
  h, w = SIZES[k % len(SIZES)]
  yy, xx = np.mgrid[:h, :w]
  image = np.stack([(xx * 6 + k * 20) % 256, (yy * 6) % 256, np.full_like(xx, 90 + k)], -1)
  image = np.clip(image + rng.integers(-10, 10, image.shape), 0, 255).astype(np.uint8)
  mask = np.zeros((h, w), np.uint8)
  classes = sorted(set(rng.choice(num_classes, size=1 + k % 2, replace=False).tolist()))
  for j, c in enumerate(classes):
    y0, x0 = 2 + 10 * j, 3 + 12 * j
    mask[y0:y0 + 12, x0:x0 + 14] = c + 1
    mask[y0 + 12, x0:x0 + 14] = 255  # an ignore band, as VOC's borders
  return image, mask, [c + 1 for c in classes]


def _voc_ids(prefix, n, start):
  return [f'{prefix}_{start + i:06d}' for i in range(n)]


def voc_authors(root, counts=None, xml=True):
  """VOC2012/{train,train_aug,validation}/{image,mask,xml} + test/image; returns {folder: ids}."""
  counts = counts or dict(train=2, train_aug=4, validation=3, test=2)
  out, k = {}, 0
  for folder, n in counts.items():
    ids = _voc_ids(f'20{10 + k % 3}', n, k)
    for image_id in ids:
      image, mask, classes = example(k, voc.NUM_CLASSES)
      k += 1
      base = os.path.join(root, 'VOC2012', folder)
      write_jpeg(os.path.join(base, 'image', f'{image_id}.jpg'), image)
      if folder != 'test':
        write_grey_png(os.path.join(base, 'mask', f'{image_id}.png'), mask)
        if xml:
          write_xml(os.path.join(base, 'xml', f'{image_id}.xml'),
                    [voc.CLASS_NAMES[c - 1] for c in classes])
    out[folder] = sorted(ids)
  return out


def voc_standard(root, n_aug=4, n_val=3, n_test=2, aug_list=True):
  """VOCdevkit/VOC2012 with SBD's SegmentationClassAug; returns {'train', 'val', 'test': ids}."""
  base = os.path.join(root, 'VOCdevkit', 'VOC2012')
  ids = dict(train=_voc_ids('2008', n_aug, 0), val=_voc_ids('2009', n_val, 100),
             test=_voc_ids('2010', n_test, 200))
  k = 0
  for split, names in ids.items():
    for image_id in names:
      image, mask, classes = example(k, voc.NUM_CLASSES)
      k += 1
      write_jpeg(os.path.join(base, 'JPEGImages', f'{image_id}.jpg'), image)
      if split == 'test':
        continue
      write_xml(os.path.join(base, 'Annotations', f'{image_id}.xml'),
                [voc.CLASS_NAMES[c - 1] for c in classes])
      write_grey_png(os.path.join(base, 'SegmentationClassAug', f'{image_id}.png'), mask)
      if split == 'val':  # the official val masks are palette PNGs
        write_palette_png(os.path.join(base, 'SegmentationClass', f'{image_id}.png'), mask)
  lists = os.path.join(base, 'ImageSets', 'Segmentation')
  os.makedirs(lists, exist_ok=True)
  for split in ('val', 'test'):
    with open(os.path.join(lists, f'{split}.txt'), 'w') as f:
      f.write('\n'.join(ids[split]) + '\n')
  if aug_list:  # the DeepLab-style list: image and mask paths on each line
    with open(os.path.join(lists, 'train_aug.txt'), 'w') as f:
      f.write(''.join(f'/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n'
                      for i in ids['train']))
  return ids


def coco_authors(root, n_train=4, n_val=2, xml=True):
  """COCO2014/{train,validation}/{image,mask,xml}; returns {'train', 'val': ids}."""
  out, k = {}, 0
  for split, folder, n in (('train', 'train', n_train), ('val', 'validation', n_val)):
    ids = [f'COCO_{folder}2014_{k + i:012d}' for i in range(n)]
    for image_id in ids:
      image, mask, classes = example(k, coco.NUM_CLASSES)
      k += 1
      base = os.path.join(root, 'COCO2014', folder)
      write_jpeg(os.path.join(base, 'image', f'{image_id}.jpg'), image)
      write_grey_png(os.path.join(base, 'mask', f'{image_id}.png'), mask)
      if xml:
        write_xml(os.path.join(base, 'xml', f'{image_id}.xml'),
                  [coco.CLASS_NAMES[c - 1] for c in classes])
    out[split] = ids
  return out


def _box(x0, y0, x1, y1):
  return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def coco_distributed(root):
  """train2014/, val2014/, annotations/instances_*.json; returns the images' (h, w) by stem.

  train: image 1 (30x40): person [0,20)x[0,20) then dog [10,30)x[10,25) drawn over it, a crowd
  car RLE over columns 35-39; image 2: no annotation; image 3: one toothbrush (category id 90)
  polygon. val: image 4: one cat.
  """
  cats = [dict(id=i, name=n, supercategory='x') for i, n in zip(coco.CATEGORY_IDS,
                                                                 coco.CLASS_NAMES)]
  sizes = {}
  spec = dict(train2014=[(1, (30, 40)), (2, (40, 30)), (3, (36, 36))], val2014=[(4, (30, 40))])
  anns = dict(
      train2014=[
          dict(id=10, image_id=1, category_id=1, iscrowd=0, segmentation=_box(0, 0, 20, 20)),
          dict(id=11, image_id=1, category_id=18, iscrowd=0, segmentation=_box(10, 10, 30, 25)),
          dict(id=12, image_id=1, category_id=3, iscrowd=1,
               segmentation=dict(counts=[35 * 30, 5 * 30], size=[30, 40])),
          dict(id=13, image_id=3, category_id=90, iscrowd=0, segmentation=_box(5, 5, 25, 30)),
      ],
      val2014=[dict(id=20, image_id=4, category_id=17, iscrowd=0,
                    segmentation=_box(2, 2, 30, 20))])
  for folder, images in spec.items():
    entries = []
    for image_id, (h, w) in images:
      stem = f'COCO_{folder}_{image_id:012d}'
      write_jpeg(os.path.join(root, folder, f'{stem}.jpg'), np.full((h, w, 3), 40 * image_id,
                                                                    np.uint8))
      entries.append(dict(id=image_id, file_name=f'{stem}.jpg', height=h, width=w))
      sizes[stem] = (h, w)
    os.makedirs(os.path.join(root, 'annotations'), exist_ok=True)
    with open(os.path.join(root, 'annotations', f'instances_{folder}.json'), 'w') as f:
      json.dump(dict(images=entries, annotations=anns[folder], categories=cats), f)
  return sizes


def corrupt_file(path, keep=60):
  """Cuts a file to its first `keep` bytes (a truncated download)."""
  with open(path, 'rb') as f:
    head = f.read(keep)
  with open(path, 'wb') as f:
    f.write(head)


# --- hostile files (tests/fault/) ------------------------------------------------------------

UNKNOWN_COLOUR = (20, 40, 60)  # not in the VOC colour map


def write_hostile_mask(path, mask, kind):
  """Writes label map `mask` in a way a reader must refuse (or, for 'rgb-voc', accept).

  kind: 'rgb-voc' (RGB, VOC colours), 'rgb-unknown' (RGB, one pixel of UNKNOWN_COLOUR),
  '16bit' (16-bit greyscale), 'palette-unknown' (palette PNG, the colour of its first class is
  not VOC's), 'empty' (zero bytes), 'truncated' (a PNG cut short).
  """
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if kind in ('rgb-voc', 'rgb-unknown'):
    rgb = io_utils.voc_palette()[mask]
    if kind == 'rgb-unknown':
      rgb[1, 2] = UNKNOWN_COLOUR
    Image.fromarray(rgb).save(path, format='PNG')
  elif kind == '16bit':
    Image.fromarray(mask.astype(np.uint16)).save(path, format='PNG')
  elif kind == 'palette-unknown':
    img = Image.fromarray(mask)
    palette = io_utils.voc_palette().copy()
    palette[mask[(mask > 0) & (mask < 255)][0]] = UNKNOWN_COLOUR
    img.putpalette(palette.tobytes())
    img.save(path, format='PNG')
  elif kind == 'empty':
    open(path, 'wb').close()
  elif kind == 'truncated':
    write_grey_png(path, mask)
    corrupt_file(path, keep=os.path.getsize(path) // 2)
  else:
    raise ValueError(f'unknown hostile mask kind {kind!r}')


def rename_example(folder, image_id, new_id):
  """Renames the image, mask and xml of `image_id` under an authors'-layout split folder.

  `new_id` may be bytes (a file name that is not UTF-8); returns it as os.listdir gives it back.
  """
  new = os.fsencode(new_id)
  for sub, ext in (('image', '.jpg'), ('mask', '.png'), ('xml', '.xml')):
    src = os.path.join(folder, sub, f'{image_id}{ext}')
    if os.path.exists(src):
      os.rename(os.fsencode(src), os.path.join(os.fsencode(os.path.join(folder, sub)),
                                               new + ext.encode()))
  return os.fsdecode(new)
