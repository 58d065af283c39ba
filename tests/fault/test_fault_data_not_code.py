"""Checkpoint, weight and seed files are data, never code: no reader unpickles.

Every np.load in the code passes allow_pickle=False and every torch.load weights_only=True (read
from the source, so a new reader cannot slip by); files carrying a pickle whose unpickling would
leave a mark on disk are refused by each reader, and the mark never appears.
Elsewhere: tests/test_weights.py::test_npz_with_object_arrays_is_refused and
::test_pth_with_arbitrary_object_is_refused (the messages in detail).
"""

import ast
import os
import pickle

import numpy as np
import pytest

from recurseed_jax import stages
from recurseed_jax.models import weights
from recurseed_jax.stages import products

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CODE = ('recurseed_jax', 'data_pipeline', 'bench', 'launch.py')
# (module, function) -> the keyword that keeps it from running code.
SAFE = {('np', 'load'): ('allow_pickle', False), ('numpy', 'load'): ('allow_pickle', False),
        ('torch', 'load'): ('weights_only', True)}
NEVER = {('pickle', 'load'), ('pickle', 'loads'), ('joblib', 'load'), ('dill', 'load'),
         ('np', 'fromfile'), ('yaml', 'load')}


def _sources():
  for entry in CODE:
    path = os.path.join(ROOT, entry)
    if os.path.isfile(path):
      yield path
    for folder, _, files in os.walk(path):
      yield from (os.path.join(folder, f) for f in files if f.endswith('.py'))


def test_every_loader_in_the_code_refuses_pickles():
  calls = []
  for path in _sources():
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
      if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and isinstance(node.func.value, ast.Name)):
        continue
      key = (node.func.value.id, node.func.attr)
      where = f'{os.path.relpath(path, ROOT)}:{node.lineno}'
      assert key not in NEVER, f'{where}: {".".join(key)} can run code'
      if key in SAFE:
        name, value = SAFE[key]
        kw = {k.arg: k.value for k in node.keywords}
        assert name in kw and isinstance(kw[name], ast.Constant) and kw[name].value is value, (
            f'{where}: {".".join(key)} without {name}={value}')
        calls.append(where)
  # One .npz reader (io_utils.load_npz: seeds, weights, synthetic data, record indices) and the
  # torch checkpoint reader at least.
  assert any(c.startswith('recurseed_jax/io_utils.py') for c in calls), calls
  assert len(calls) >= 2, calls


class Payload:
  """Unpickling this creates the folder `mark`: the sign that a reader ran code."""

  def __init__(self, mark):
    self.mark = mark

  def __reduce__(self):
    return (os.makedirs, (self.mark,))


def _seed_reader(path):
  ctx = stages.Context(config=None, data=None, class_names=(),
                       workdir=os.path.dirname(os.path.dirname(os.path.dirname(path))))
  return products.load_seed(ctx, os.path.basename(path)[:-4])


def _object_npz(path, mark):
  np.savez(path, classes=np.zeros(2, np.uint8), rs=np.array([Payload(mark)], dtype=object))


def _raw_pickle(path, mark):
  with open(path, 'wb') as f:
    pickle.dump({'rs': Payload(mark)}, f)


@pytest.mark.parametrize('reader,writer,error', [
    (_seed_reader, _object_npz, ValueError),
    (_seed_reader, _raw_pickle, ValueError),
    (weights.read_state_dict, _object_npz, weights.UnsafeCheckpointError),
    (weights.read_state_dict, _raw_pickle, weights.WeightImportError),
], ids=['seeds-object-array', 'seeds-raw-pickle', 'weights-object-array', 'weights-raw-pickle'])
def test_pickle_bearing_npz_is_refused_naming_the_file(tmp_path, reader, writer, error):
  path = str(tmp_path / 'seeds' / 'train' / 'img 1.npz')
  os.makedirs(os.path.dirname(path))
  mark = str(tmp_path / 'ran')
  writer(path, mark)
  with pytest.raises(error) as info:
    reader(path)
  assert path in str(info.value)
  assert not os.path.exists(mark)


def test_pth_with_a_pickled_object_is_refused(tmp_path):
  torch = pytest.importorskip('torch')
  path, mark = str(tmp_path / 'w.pth'), str(tmp_path / 'ran')
  torch.save({'conv1.weight': torch.zeros(2), 'extra': Payload(mark)}, path)
  with pytest.raises(weights.UnsafeCheckpointError, match='weights_only=True') as info:
    weights.read_state_dict(path)
  assert path in str(info.value) and not os.path.exists(mark)
