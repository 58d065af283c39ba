"""TFDS builders: voc2012_wsss, coco2014_wsss and synthetic_wsss.

Each reads a dataset once from its manual dir (config.data.root; any layout data_pipeline/voc.py or
coco.py knows; for the synthetic benchmark its generated folder) and writes TFRecords into
config.data.tfds_dir, so later runs start without listing, parsing or checking files again:

    builder = tfds_builders.make_builder(config, workdir)   # prepared on first use
    ds = builder.as_dataset(split='train')                  # plain TFDS use works too

Features: id (text), image (the original JPEG / PNG bytes, not re-encoded), mask (greyscale PNG of
label indices: 0 background, 1..C classes, 255 ignore; a 1x1 255 for test images), label (uint8
[C] multi-hot), height and width. Every image and mask is decoded and checked while writing, so
bad files fail the build naming the file (a corrupt one is skipped and counted with
data.skip_corrupt).
"""

import dataclasses
import io
import os

import numpy as np
from PIL import Image

from data_pipeline import coco
from data_pipeline import json_cache
from data_pipeline import splits
from data_pipeline import synthetic
from data_pipeline import voc

# isort: split
import tensorflow_datasets as tfds  # last, as it always was: TF starts after our modules


def _png(array):
  buf = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(array)).save(buf, format='PNG')
  return buf.getvalue()


def _encoded_image(split, i):
  """The image's bytes: the original file when there is one (no re-encoding), else a PNG."""
  image = split.image(i)  # decodes, so a corrupt file fails (or is skipped) here
  if isinstance(split, splits.FileSplit):
    with open(split.image_paths[i], 'rb') as f:
      return f.read(), image.shape[:2]
  return _png(image), image.shape[:2]


def examples(split, skip_corrupt=False, log=print, where=''):
  """Yields (key, features) of every example of a split, checked; skips corrupt ones if asked."""
  skipped = []
  for i in range(len(split)):
    try:
      image, (h, w) = _encoded_image(split, i)
      mask = split.mask(i) if split.has_masks else np.full((1, 1), splits.IGNORE, np.uint8)
    except splits.CorruptFileError as e:
      if not skip_corrupt:
        raise
      skipped.append(str(e))
      continue
    yield split.ids[i], dict(id=split.ids[i], image=image, mask=_png(mask),
                             label=split.labels[i].astype(np.uint8), height=h, width=w)
  if skipped:
    log(f'data: skipped {len(skipped)} corrupt file(s) of {len(split)} in {where} '
        f'(data.skip_corrupt): {skipped[0]}' + (' ...' if len(skipped) > 1 else ''))


class _WsssBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared by the three builders: features, generation and the reader options."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First version.'}
  # No checksums file beside the code: without this, TFDS looks for one through a code path that
  # needs the importlib_resources backport on Python >= 3.9 (tfds 4.9).
  code_path = None

  def __init__(self, *, skip_corrupt=False, workers=0, mask_dir='', log=print, **kwargs):
    self._skip_corrupt = skip_corrupt
    self._workers = workers
    self._mask_dir = mask_dir
    self._log = log
    super().__init__(**kwargs)

  def class_names(self):
    raise NotImplementedError

  def _load_splits(self, manual_dir):
    """{logical split name: split} read from the manual dir."""
    raise NotImplementedError

  def _info(self):
    c = len(self.class_names())
    return tfds.core.DatasetInfo(
        builder=self,
        description=(f'{type(self).__name__}: images, semantic masks and image-level labels for '
                     f'weakly supervised segmentation; classes: {", ".join(self.class_names())}'),
        features=tfds.features.FeaturesDict({
            'id': tfds.features.Text(),
            'image': tfds.features.Image(shape=(None, None, 3)),
            'mask': tfds.features.Image(shape=(None, None, 1)),
            'label': tfds.features.Tensor(shape=(c,), dtype=np.uint8),
            'height': tfds.features.Scalar(dtype=np.int32),
            'width': tfds.features.Scalar(dtype=np.int32),
        }),
        homepage='https://arxiv.org/abs/2204.06754')

  def _split_generators(self, dl_manager):
    loaded = self._load_splits(os.fspath(dl_manager.manual_dir))
    return {name: self._generate_examples(split=split, where=f'{name} ({where})')
            for name, (split, where) in loaded.items()}

  def _generate_examples(self, split, where=''):
    yield from examples(split, self._skip_corrupt, self._log, where)


class Voc2012Wsss(_WsssBuilder):
  """PASCAL VOC 2012 + SBD: train (= train_aug, 10,582), val (1,449), test (1,456, no masks)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = ('Point config.data.root (the manual dir) at PASCAL VOC 2012 '
                                  'in one of: ' + '; '.join(voc.LAYOUTS.values()))

  def class_names(self):
    return list(voc.CLASS_NAMES)

  def _load_splits(self, manual_dir):
    layout = voc.detect(manual_dir)
    self._log(f'data: building voc2012_wsss from {layout.describe()}')
    out = {}
    for name in voc.SPLITS:
      try:
        out[name] = (voc.load_split(layout, name, workers=self._workers), layout.base)
      except FileNotFoundError:
        if name != 'test':  # test images are an optional download
          raise
    return out


class Coco2014Wsss(_WsssBuilder):
  """COCO 2014: train (82,081 images with a class) and val (40,137)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = ('Point config.data.root (the manual dir) at COCO 2014 in one '
                                  'of: ' + '; '.join(coco.LAYOUTS.values()))

  def class_names(self):
    return list(coco.CLASS_NAMES)

  def _load_splits(self, manual_dir):
    layout = coco.detect(manual_dir)
    self._log(f'data: building coco2014_wsss from {layout.describe()}')
    return {name: (coco.load_split(layout, name, workers=self._workers, mask_dir=self._mask_dir,
                                   log=self._log), layout.base)
            for name in coco.SPLITS}


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
  num_classes: int = 5


class SyntheticWsss(_WsssBuilder):
  """The embedded synthetic benchmark (data_pipeline/synthetic.py); one config per parameter set."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = 'The folder synthetic.prepare() generated.'

  def class_names(self):
    return synthetic.class_names(self.builder_config.num_classes)

  def _load_splits(self, manual_dir):
    out = {}
    for name in ('train', 'val'):
      d = synthetic.load_split(manual_dir, name)
      out[name] = (splits.ArraySplit(d['ids'], d['images'], d['labels'], d['masks']), manual_dir)
    return out


def tfds_dir(config, workdir):
  """config.data.tfds_dir, or <cache_dir or workdir/data>/tfds."""
  return config.data.tfds_dir or os.path.join(json_cache.cache_dir(config, workdir), 'tfds')


def make_builder(config, workdir, log=print):
  """The prepared builder of config.data.name (built into tfds_dir on first use)."""
  d = config.data
  kwargs = dict(data_dir=tfds_dir(config, workdir), skip_corrupt=bool(d.skip_corrupt),
                workers=d.workers, log=log)
  if d.name == 'synthetic':
    manual = synthetic.prepare(d, workdir)
    builder = SyntheticWsss(config=SyntheticConfig(name=os.path.basename(manual),
                                                   num_classes=int(d.num_classes)), **kwargs)
  elif d.name == 'voc12':
    manual = voc.detect(d.root).base
    builder = Voc2012Wsss(**kwargs)
  elif d.name == 'coco14':
    layout = coco.detect(d.root)
    manual = layout.base
    builder = Coco2014Wsss(mask_dir=d.coco_mask_dir, **kwargs)
  else:
    raise ValueError(f'config.data.name={d.name!r} has no TFDS builder')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
  return builder
