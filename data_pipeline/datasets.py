"""Data providers: what the stages see of a dataset (arrays per split, training batches).

`build(config, workdir)` picks the reader for `config.data.name`; today the synthetic benchmark.
"""

import functools

from data_pipeline import pipeline
from data_pipeline import synthetic

KNOWN = ('synthetic',)


class SyntheticData:
  """The embedded benchmark, generated once into its cache folder."""

  def __init__(self, config, workdir):
    self.config = config
    self.root = synthetic.prepare(config.data, workdir)
    self.class_names = synthetic.class_names(config.data.num_classes)

  @functools.lru_cache(maxsize=None)
  def split(self, name):
    return synthetic.load_split(self.root, name)

  def train_batches(self, start_step=0):
    """Augmented training batches from `start_step` on (deterministic for config.seed)."""
    d = self.split('train')
    return pipeline.train_iterator_from_config(
        self.config.data, d['images'], d['masks'], d['labels'],
        batch_size=self.config.train.batch_size, seed=self.config.seed, start_step=start_step)


def build(config, workdir):
  name = config.data.name
  if name == 'synthetic':
    return SyntheticData(config, workdir)
  raise ValueError(f'config.data.name={name!r} is not a known dataset; known: {", ".join(KNOWN)}')
