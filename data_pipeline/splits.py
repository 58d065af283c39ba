"""What the host stages see of one dataset split: ids, image labels, and images read one by one.

Every dataset provider (data_pipeline/providers.py) returns splits of one interface,
data_pipeline/interfaces.py's `Split` Protocol, so the seeds, CRF, evaluation and export stages
never care whether images live in one array (the synthetic benchmark), in JPEG/PNG folders (VOC,
COCO) or in TFRecords:

  len(split)        number of images
  split.ids         list of image ids (file stems), in a fixed order
  split.labels      float32 [N, C] image-level labels (zeros where unknown, e.g. VOC test)
  split.has_masks   whether split.mask(i) exists (False for test splits)
  split.image(i)    uint8 [H, W, 3]
  split.mask(i)     uint8 [H, W]: 0 background, 1..C classes, 255 ignore
  split.size(i)     (H, W) without decoding pixels where the format allows it

Images of a split may differ in size; consumers bucket them (recurseed_jax/infer.py).
Splits here: `ArraySplit` (in memory), `FileSplit` (image / mask files); the TFDS records' split
is data_pipeline/records.py's `RecordSplit`. Errors name the file: a missing one
(FileNotFoundError), one that does not decode (`CorruptFileError`, skippable with
config.data.skip_corrupt), a mask that decodes but is not a label map of this dataset
(`BadFileError`): values outside {0..C, 255}, another size than its image, 16-bit or 1/2/4-bit
grey, colours (RGB or palette) that are not the VOC colour map.

Masks are read exactly as the tf.data stream reads them (data_pipeline/pipeline.py decode_mask),
so a mask is either good for both or refused by both: 8-bit grey (+ alpha) holds the indices;
RGB(A) and palette PNGs are read by colour, through the VOC colour map.
"""

import functools
import os

import numpy as np
from PIL import Image

from recurseed_jax import io_utils

IGNORE = 255


class ArraySplit:
  """A split held in memory as arrays of equal-sized images (the synthetic benchmark)."""

  def __init__(self, ids, images, labels, masks=None):
    self.ids = [str(i) for i in ids]
    self.images = images
    self.masks = masks
    self.labels = np.asarray(labels, np.float32)
    if not len(self.ids) == len(images) == len(self.labels):
      raise ValueError(f'ids, images and labels differ in length: '
                       f'{len(self.ids)}, {len(images)}, {len(self.labels)}')
    if masks is not None and len(masks) != len(images):
      raise ValueError(f'{len(masks)} masks for {len(images)} images')

  @property
  def has_masks(self):
    return self.masks is not None

  def __len__(self):
    return len(self.ids)

  def image(self, i):
    return self.images[i]

  def mask(self, i):
    if self.masks is None:
      raise ValueError('this split has no masks')
    return self.masks[i]

  def size(self, i):
    return tuple(self.images[i].shape[:2])


class BadFileError(ValueError):
  """An input file that is there but unusable; the message names it."""


class CorruptFileError(BadFileError):
  """An image or mask file that cannot be decoded (data.skip_corrupt may skip it)."""


def image_size(path):
  """(H, W) of an image file from its header, without decoding the pixels."""
  try:
    with Image.open(path) as img:
      w, h = img.size
  except FileNotFoundError:
    raise FileNotFoundError(f'image file {path} is missing') from None
  except (OSError, ValueError, SyntaxError) as e:
    raise CorruptFileError(f'cannot read image {path}: {e} (a corrupt file? set '
                           'config.data.skip_corrupt=True to skip such images)') from e
  return h, w


def read_image(path):
  """uint8 [H, W, 3] RGB pixels of an image file; errors name the file."""
  try:
    with Image.open(path) as img:
      img.load()  # decodes now, so a truncated file fails here and not later
      return np.asarray(img.convert('RGB'))
  except FileNotFoundError:
    raise FileNotFoundError(f'image file {path} is missing') from None
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise CorruptFileError(f'cannot decode image {path}: {e} (a corrupt file? set '
                           'config.data.skip_corrupt=True to skip such images)') from e


_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def png_header(path):
  """(bit depth, colour type) from a PNG's IHDR chunk; None if the file is no PNG."""
  with open(path, 'rb') as f:
    head = f.read(26)
  if len(head) < 26 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b'IHDR':
    return None
  return head[24], head[25]


@functools.lru_cache(maxsize=None)
def _voc_codes():
  """The VOC colours as sorted 24-bit codes, and the label of each (the map is a bijection)."""
  pal = io_utils.voc_palette().astype(np.int64)
  codes = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
  order = np.argsort(codes)
  return codes[order], order.astype(np.uint8)


def colours_to_labels(path, rgb):
  """uint8 [H, W] labels of VOC-colour-map pixels; BadFileError at the first other colour."""
  rgb = rgb[..., :3].astype(np.int64)
  codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
  known, labels = _voc_codes()
  pos = np.clip(np.searchsorted(known, codes), 0, len(known) - 1)
  bad = known[pos] != codes
  if bad.any():
    y, x = np.argwhere(bad)[0]
    raise BadFileError(
        f'mask {path} has the colour {tuple(int(v) for v in rgb[y, x])} at (y={y}, x={x}), which '
        'is not in the VOC colour map; colour masks must use it, or save label indices as an '
        '8-bit greyscale PNG')
  return labels[pos]


def _decode_mask(path):
  """uint8 [H, W] labels of a mask file, read as the tf.data stream reads it."""
  header = png_header(path)
  if header is None:
    raise CorruptFileError(f'mask {path} is not a PNG (empty, cut short or another format); '
                           'masks are PNG label maps')
  depth, colour_type = header
  if colour_type != 3 and depth != 8:  # palette indices of any depth expand to 8-bit colours
    raise BadFileError(f'mask {path} is a {depth}-bit PNG; masks are 8-bit (greyscale label '
                       'indices, or VOC colours)')
  with Image.open(path) as img:
    img.load()
    mode = img.mode
    if mode in ('L', 'LA'):
      return np.asarray(img.getchannel(0))
    if mode in ('P', 'PA'):
      return colours_to_labels(path, np.asarray(img.convert('RGB')))
    if mode in ('RGB', 'RGBA'):
      return colours_to_labels(path, np.asarray(img))
  raise BadFileError(f'mask {path} has the image mode {mode!r}; masks are 8-bit greyscale label '
                     'indices or VOC colours')


def read_mask(path, num_classes, size=None, image_path=None):
  """uint8 [H, W] label map of a PNG mask, checked: values in {0..C, 255}, size (H, W) if given."""
  try:
    mask = _decode_mask(path)
  except FileNotFoundError:
    raise FileNotFoundError(f'mask file {path} is missing') from None
  except BadFileError:
    raise
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise CorruptFileError(f'cannot decode mask {path}: {e} (a corrupt file? set '
                           'config.data.skip_corrupt=True to skip such images)') from e
  bad = (mask > num_classes) & (mask != IGNORE)
  if bad.any():
    values = sorted(set(np.unique(mask[bad]).tolist()))
    raise BadFileError(f'mask {path} has values {values[:8]} outside 0..{num_classes} (classes) '
                       f'and {IGNORE} (ignore); is it a mask of this dataset?')
  if size is not None and tuple(mask.shape) != tuple(size):
    raise BadFileError(f'mask {path} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image '
                       f'{image_path or ""} is {size[1]}x{size[0]}')
  return mask


class FileSplit:
  """A split of image files (JPEG / PNG) and PNG masks, read lazily one by one (VOC, COCO)."""

  def __init__(self, ids, image_paths, labels, mask_paths=None, *, num_classes):
    self.ids = [str(i) for i in ids]
    self.image_paths = [os.fspath(p) for p in image_paths]
    self.mask_paths = None if mask_paths is None else [os.fspath(p) for p in mask_paths]
    self.labels = np.asarray(labels, np.float32).reshape(len(self.ids), num_classes)
    self.num_classes = int(num_classes)
    if len(self.image_paths) != len(self.ids):
      raise ValueError(f'{len(self.ids)} ids for {len(self.image_paths)} images')
    if self.mask_paths is not None and len(self.mask_paths) != len(self.ids):
      raise ValueError(f'{len(self.mask_paths)} masks for {len(self.ids)} images')

  @property
  def has_masks(self):
    return self.mask_paths is not None

  def __len__(self):
    return len(self.ids)

  def image(self, i):
    return read_image(self.image_paths[i])

  def size(self, i):
    return image_size(self.image_paths[i])

  def mask(self, i):
    if self.mask_paths is None:
      raise ValueError('this split has no masks')
    return read_mask(self.mask_paths[i], self.num_classes, self.size(i), self.image_paths[i])

  def check(self, i):
    """Reads example i fully; raises the error naming its file if anything is wrong."""
    self.image(i)
    if self.has_masks:
      self.mask(i)

  def subset(self, keep):
    """The split restricted to the indices `keep` (in that order)."""
    keep = list(keep)
    masks = None if self.mask_paths is None else [self.mask_paths[i] for i in keep]
    return FileSplit([self.ids[i] for i in keep], [self.image_paths[i] for i in keep],
                     self.labels[keep], masks, num_classes=self.num_classes)
