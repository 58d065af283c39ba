"""Data providers: what the stages see of a dataset (splits, training batches).

A provider has `class_names` (C names, no background), `split(name)` ('train', 'val', and 'test'
where the dataset has one; data_pipeline/splits.py's splits) and
`train_batches(start_step=0, process_index=0, process_count=1, config=None, mask_dir=None)`;
data_pipeline/interfaces.py's `Provider` Protocol says what each member holds. The three here
are SyntheticData (the embedded benchmark, in memory), FileData (VOC and COCO folders) and
RecordData (the records of a TFDS builder).

`build(config, workdir)` picks the reader for config.data.name ('synthetic', 'voc12', 'coco14')
and config.data.source ('files': the folders as they are; 'tfds': records written once by a TFDS
builder, data_pipeline/tfds_builders.py); data_pipeline/registry.py holds those names.

tensorflow (data_pipeline/pipeline.py, the training stream) is imported when a stream is first
built, not with this module: a launch whose stages only infer, score or export skips its import.
"""

import functools
import os

import numpy as np

from data_pipeline import coco
from data_pipeline import corrupt_files
from data_pipeline import interfaces
from data_pipeline import json_cache
from data_pipeline import registry
from data_pipeline import splits
from data_pipeline import synthetic
from data_pipeline import thread_pool
from data_pipeline import voc


def mask_paths(split, mask_dir):
  """`<mask_dir>/<id>.png` of every image of a split; FileNotFoundError names the first missing."""
  paths = [os.path.join(mask_dir, f'{image_id}.png') for image_id in split.ids]
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    raise FileNotFoundError(f'{len(missing)} of {len(paths)} masks are missing from {mask_dir}, '
                            f'e.g. {missing[0]}: run the crf stage first')
  return paths


class SyntheticData:
  """The embedded benchmark, generated once into its cache folder."""

  def __init__(self, config, workdir):
    self.config = config
    self.root = synthetic.prepare(config.data, workdir)
    self.class_names = synthetic.class_names(config.data.num_classes)

  @functools.lru_cache(maxsize=None)
  def _arrays(self, name):
    return synthetic.load_split(self.root, name)

  def split(self, name):
    """The split as data_pipeline/splits.py describes it."""
    d = self._arrays(name)
    return splits.ArraySplit(d['ids'], d['images'], d['labels'], d['masks'])

  def train_batches(self, start_step=0, process_index=0, process_count=1, config=None,
                    mask_dir=None):
    """Augmented training batches from `start_step` on (deterministic for config.seed)."""
    config = config or self.config
    d = self._arrays('train')
    masks = d['masks']
    if mask_dir is not None:
      from recurseed_jax import io_utils
      masks = np.stack([io_utils.load_mask_png(p)
                        for p in mask_paths(self.split('train'), mask_dir)])
    from data_pipeline import pipeline
    return pipeline.train_iterator_from_config(
        config.data, d['images'], masks, d['labels'],
        batch_size=config.train.batch_size, seed=config.seed, start_step=start_step,
        process_index=process_index, process_count=process_count)


class _StreamMixin:
  """train_batches over `self._source(split)` for providers whose splits are read lazily."""

  def train_batches(self, start_step=0, process_index=0, process_count=1, config=None,
                    mask_dir=None):
    """Augmented training batches from `start_step` on; a bad file raises an error naming it."""
    config = config or self.config
    split = self.split('train')
    if mask_dir is not None:
      split = self._with_masks(split, mask_paths(split, mask_dir))
    if not split.has_masks:
      raise ValueError("the 'train' split has no masks; training needs them (seed quality metrics "
                       'and the upper bound)')
    batch_size, seed = config.train.batch_size, config.seed
    from data_pipeline import pipeline
    ds = pipeline.train_stream(self._source(split), batch_size=batch_size, seed=seed,
                               start_step=start_step, process_index=process_index,
                               process_count=process_count,
                               **pipeline.stream_kwargs(config.data))

    def diagnose(step):
      for i in pipeline.batch_indices(len(split), step, batch_size=batch_size, seed=seed,
                                      process_index=process_index, process_count=process_count):
        split.check(i)  # raises the error naming the file

    return pipeline.checked_iterator(ds, start_step, diagnose)


class FileData(_StreamMixin):
  """VOC 2012 or COCO 2014 read from their folders (either layout each), lazily per split."""

  def __init__(self, config, workdir, log=print):
    self.config = config
    self.log = log
    self.cache_dir = json_cache.cache_dir(config, workdir)
    d = config.data
    self.module = voc if d.name == 'voc12' else coco
    self.layout = self.module.detect(d.root)
    self.class_names = list(self.module.CLASS_NAMES)
    log(f'data: {d.name}: found {self.layout.describe()}')
    self.split('train')  # fail early (before any compile) on a missing or bad training split

  @functools.lru_cache(maxsize=None)
  def split(self, name):
    """The split as data_pipeline/splits.py describes it (a FileSplit)."""
    d = self.config.data
    workers = thread_pool.workers_or_default(d.workers)
    if self.module is voc:
      split = voc.load_split(self.layout, name, self.cache_dir, workers)
    else:
      split = coco.load_split(self.layout, name, self.cache_dir, workers,
                              mask_dir=d.coco_mask_dir, log=self.log)
    if d.skip_corrupt:
      key = json_cache.cache_key(self.layout.kind, self.layout.base, name, split.ids)
      split = corrupt_files.drop_corrupt(split, self.cache_dir, key, workers, self.log,
                                         where=f'{d.name} {name}')
    return split

  def _source(self, split):
    from data_pipeline import pipeline
    return pipeline.file_source(split.image_paths, split.mask_paths, split.labels,
                                split.num_classes)

  def _with_masks(self, split, paths):
    return splits.FileSplit(split.ids, split.image_paths, split.labels, paths,
                            num_classes=split.num_classes)


class RecordData(_StreamMixin):
  """Any dataset read from the records of its TFDS builder (built on first use)."""

  def __init__(self, config, workdir, log=print):
    from data_pipeline import records
    from data_pipeline import tfds_builders
    self.config = config
    self._records = records
    self.builder = tfds_builders.make_builder(config, workdir, log=log)
    self.class_names = self.builder.class_names()
    log(f'data: {config.data.name}: TFDS records {self.builder.data_dir}')
    self.split('train')  # builds the index once

  @functools.lru_cache(maxsize=None)
  def split(self, name):
    """The split as data_pipeline/splits.py describes it (a records.RecordSplit)."""
    infos = self.builder.info.splits
    if name not in infos:
      raise ValueError(f'the {self.config.data.name} records at {self.builder.data_dir} have no '
                       f'{name!r} split; they have: {", ".join(sorted(infos.keys()))}')
    files = [os.fspath(p) for p in infos[name].filepaths]
    index = self._records.load_index(
        os.path.join(os.fspath(self.builder.data_dir), f'wsss-index-{name}.npz'), files)
    return self._records.RecordSplit(files, index, len(self.class_names),
                                     has_masks=name != 'test')

  def _source(self, split):
    return self._records.record_source(split)

  def _with_masks(self, split, paths):
    del split, paths
    raise ValueError('the multi-stage segmenter (train_seg) reads the images from their folders: '
                     'set config.data.source=files for that stage (the records hold the '
                     'ground-truth masks, not the pseudo masks)')


def build(config, workdir) -> interfaces.Provider:
  """The provider of config.data.name / config.data.source."""
  d = config.data
  if d.name not in registry.DATASETS:
    raise ValueError(f'config.data.name={d.name!r} is not a known dataset; known: '
                     f'{", ".join(registry.DATASETS)}')
  if d.source not in registry.SOURCES:
    raise ValueError(f'config.data.source={d.source!r} is not one of: '
                     f'{", ".join(registry.SOURCES)}')
  if d.source == 'tfds':
    return RecordData(config, workdir)
  if d.name == 'synthetic':
    return SyntheticData(config, workdir)
  return FileData(config, workdir)
