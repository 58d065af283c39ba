"""Random access to the TFRecords of our TFDS builders (data_pipeline/tfds_builders.py).

TFRecord files are sequential, but the training stream (data_pipeline/pipeline.py) draws examples
from a per-epoch permutation so that it is exactly resumable. So each split gets an index, built
once by walking the record framing (8-byte length, 4-byte CRC, data, 4-byte CRC) and kept beside
the records: per example its file, offset and length, plus id, label and size (for the split
interface without decoding). Examples are ordered by id, like the file readers, so a split read
from records and from files lines up index by index.
"""

import io
import os
import struct

import numpy as np
from PIL import Image

from data_pipeline import pipeline  # first: it quiets TF's C++ logs before tensorflow loads
from recurseed_jax import io_utils

# isort: split
import tensorflow as tf

INDEX_VERSION = 1


def walk_records(path):
  """Yields (offset, length, data) of every record of a TFRecord file (CRCs not checked)."""
  with open(path, 'rb') as f:
    pos = 0
    while True:
      header = f.read(12)
      if not header:
        return
      if len(header) < 12:
        raise ValueError(f'truncated TFRecord file {path} at byte {pos}')
      (length,) = struct.unpack('<Q', header[:8])
      data = f.read(length)
      if len(data) < length or len(f.read(4)) < 4:
        raise ValueError(f'truncated TFRecord file {path} at byte {pos}')
      yield pos + 12, length, data
      pos += 12 + length + 4


def _feature(example, key):
  f = example.features.feature[key]
  return f.bytes_list.value or f.int64_list.value


def build_index(filepaths):
  """The index of the records in `filepaths` (dict of numpy arrays), ordered by id."""
  rows = []
  for file_index, path in enumerate(filepaths):
    for offset, length, data in walk_records(path):
      ex = tf.train.Example.FromString(data)
      rows.append((_feature(ex, 'id')[0].decode(), file_index, offset, length,
                   list(_feature(ex, 'label')), _feature(ex, 'height')[0],
                   _feature(ex, 'width')[0]))
  rows.sort(key=lambda r: r[0])
  if not rows:
    return None
  ids, files, offsets, lengths, labels, heights, widths = zip(*rows)
  return dict(version=np.int64(INDEX_VERSION), ids=np.array(ids, dtype=str),
              files=np.array(files, np.int32), offsets=np.array(offsets, np.int64),
              lengths=np.array(lengths, np.int64), labels=np.array(labels, np.uint8),
              heights=np.array(heights, np.int64), widths=np.array(widths, np.int64))


def load_index(index_path, filepaths):
  """The split's index from `index_path`, built and saved there (atomically) on first use."""
  if os.path.exists(index_path):
    index = io_utils.load_npz(index_path)
    if int(index['version']) == INDEX_VERSION:
      return index
  index = build_index(filepaths)
  if index is None:
    raise ValueError(f'the records {", ".join(map(str, filepaths))} hold no example')
  io_utils.save_npz(index_path, **index)
  return index


class RecordSplit:
  """A split of a TFDS builder's records (data_pipeline/splits.py's interface), read lazily."""

  def __init__(self, filepaths, index, num_classes, has_masks=True):
    self.filepaths = [os.fspath(p) for p in filepaths]
    self.index = index
    self.ids = [str(i) for i in index['ids']]
    self.labels = index['labels'].astype(np.float32).reshape(len(self.ids), num_classes)
    self.num_classes = num_classes
    self.has_masks = has_masks

  def __len__(self):
    return len(self.ids)

  def read(self, i):
    """The serialized tf.train.Example of example i."""
    with open(self.filepaths[self.index['files'][i]], 'rb') as f:
      f.seek(int(self.index['offsets'][i]))
      return f.read(int(self.index['lengths'][i]))

  def _bytes(self, i, key):
    return _feature(tf.train.Example.FromString(self.read(i)), key)[0]

  def image(self, i):
    with Image.open(io.BytesIO(self._bytes(i, 'image'))) as img:
      return np.asarray(img.convert('RGB'))

  def mask(self, i):
    if not self.has_masks:
      raise ValueError('this split has no masks')
    with Image.open(io.BytesIO(self._bytes(i, 'mask'))) as img:
      return np.array(img, np.uint8)

  def size(self, i):
    return int(self.index['heights'][i]), int(self.index['widths'][i])

  def check(self, i):
    """Records were checked when they were written; nothing to re-read."""
    del i


def record_source(split):
  """A pipeline.Source over a RecordSplit: records read by index, decoded in the graph."""
  spec = {'image': tf.io.FixedLenFeature([], tf.string),
          'mask': tf.io.FixedLenFeature([], tf.string)}

  def read(i):
    # An object array: numpy's bytes dtype would drop trailing zero bytes of a record.
    return np.array(split.read(int(i)), dtype=object)

  def fetch(index):
    raw = tf.numpy_function(read, [index], tf.string, stateful=False)
    raw.set_shape([])
    ex = tf.io.parse_single_example(raw, spec)
    return pipeline.decode_example(ex['image'], ex['mask'], split.num_classes)

  return pipeline.Source(split.labels, fetch)
