"""Every split and provider class has the shape of data_pipeline/interfaces.py's Protocols."""

import inspect

import numpy as np
import pytest

from data_pipeline import interfaces
from data_pipeline import splits


def _array_split():
  images = np.zeros((2, 4, 4, 3), np.uint8)
  return splits.ArraySplit(['a', 'b'], images, np.zeros((2, 3)), np.zeros((2, 4, 4), np.uint8))


def test_array_and_file_splits_are_splits():
  files = splits.FileSplit(['a'], ['a.jpg'], np.zeros((1, 3)), ['a.png'], num_classes=3)
  for split in (_array_split(), files):
    assert isinstance(split, interfaces.Split), type(split).__name__
  assert not isinstance(object(), interfaces.Split)


def test_record_split_is_a_split():
  pytest.importorskip('tensorflow')
  from data_pipeline import records
  index = dict(ids=np.array(['a']), labels=np.zeros((1, 3), np.uint8), files=np.zeros(1),
               offsets=np.zeros(1), lengths=np.zeros(1), heights=np.ones(1), widths=np.ones(1))
  assert isinstance(records.RecordSplit(['x.tfrecord'], index, 3), interfaces.Split)


def _parameters(fn):
  """(name, default) of each parameter but self; annotations are the Protocol's alone."""
  return [(p.name, p.default) for p in inspect.signature(fn).parameters.values()][1:]


def test_provider_methods_have_the_protocols_signatures():
  pytest.importorskip('tensorflow')
  from data_pipeline import providers
  for cls in (providers.SyntheticData, providers.FileData, providers.RecordData):
    for name in ('split', 'train_batches'):
      assert _parameters(getattr(cls, name)) == _parameters(getattr(interfaces.Provider, name)), (
          f'{cls.__name__}.{name}')


def test_synthetic_provider_is_a_provider(tmp_path):
  pytest.importorskip('tensorflow')
  from configs import default
  from data_pipeline import providers
  cfg = default.get_config()
  cfg.data.num_train, cfg.data.num_val, cfg.data.image_size = 4, 2, 16
  cfg.data.cache_dir = str(tmp_path)
  provider = providers.build(cfg, str(tmp_path))
  assert isinstance(provider, interfaces.Provider)
  assert isinstance(provider.split('val'), interfaces.Split)
