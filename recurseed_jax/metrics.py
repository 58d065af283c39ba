"""Host-side training metrics: a JSONL log and TensorBoard event files, without tensorflow.

The GPU image has no tensorflow, so the event files are written by hand. Their format is small:
a TFRecord stream (uint64 length, masked CRC32C of the length, the bytes, masked CRC32C of the
bytes) of `Event` protocol buffers, of which we need five fields:

  Event:      wall_time = 1 (double), step = 2 (int64), file_version = 3 (string),
              summary = 5 (Summary), session_log = 7 (SessionLog)
  Summary:    value = 1 (repeated Value)
  Value:      tag = 1 (string), simple_value = 2 (float)
  SessionLog: status = 1 (enum, START = 1)

A resumed run first writes SessionLog START at its first step: TensorBoard then drops the points
a killed run had logged past its last checkpoint, as `_truncate_log` does for the JSONL file.
"""

import itertools
import json
import math
import os
import socket
import struct
import time

from recurseed_jax import io_utils


def _crc32c_table():
  poly = 0x82F63B78  # Castagnoli, reflected.
  table = []
  for n in range(256):
    c = n
    for _ in range(8):
      c = (c >> 1) ^ poly if c & 1 else c >> 1
    table.append(c)
  return table


_TABLE = _crc32c_table()
_FILE_IDS = itertools.count()


def crc32c(data):
  crc = 0xFFFFFFFF
  for b in data:
    crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data):
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data):
  """One TFRecord frame around `data`."""
  length = struct.pack('<Q', len(data))
  return (length + struct.pack('<I', _masked_crc(length)) + data +
          struct.pack('<I', _masked_crc(data)))


# --- protocol buffer wire format: just the field kinds the Event messages use -----------------


def _varint(n):
  out = bytearray()
  while True:
    byte = n & 0x7F
    n >>= 7
    if n:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def _key(field, wire_type):
  return _varint(field << 3 | wire_type)


def _bytes_field(field, data):
  return _key(field, 2) + _varint(len(data)) + data


def _event(step, wall_time, **fields):
  """An Event; `fields` maps file_version / summary / session_log to their encoded bytes."""
  out = _key(1, 1) + struct.pack('<d', wall_time) + _key(2, 0) + _varint(int(step))
  numbers = dict(file_version=3, summary=5, session_log=7)
  for name, data in fields.items():
    out += _bytes_field(numbers[name], data)
  return out


def _summary(scalars):
  """A Summary with one Value(tag, simple_value) per scalar."""
  out = b''
  for tag, value in scalars.items():
    v = _bytes_field(1, tag.encode()) + _key(2, 5) + struct.pack('<f', float(value))
    out += _bytes_field(1, v)
  return out


class EventWriter:
  """Appends scalar summaries to a new `events.out.tfevents.*` file in `logdir`."""

  def __init__(self, logdir, start_step=0):
    os.makedirs(logdir, exist_ok=True)
    name = (f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.'
            f'{next(_FILE_IDS)}')  # Unique even for two writers in one process and second.
    self.path = os.path.join(logdir, name)
    self._file = open(self.path, 'ab')
    self._write(_event(0, time.time(), file_version=b'brain.Event:2'))
    if start_step:
      # SessionLog(status=START) at the first new step: TensorBoard purges stale later points.
      self._write(_event(start_step + 1, time.time(), session_log=_key(1, 0) + _varint(1)))
    self._file.flush()

  def _write(self, event):
    self._file.write(tfrecord(event))

  def scalars(self, step, values):
    values = {k: v for k, v in values.items() if math.isfinite(v)}
    self._write(_event(step, time.time(), summary=_summary(values)))
    self._file.flush()

  def close(self):
    self._file.close()


def read_log(path):
  """The records of a metrics.jsonl in order, [] without one; a line cut short by a kill is
  skipped."""
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        continue
      if isinstance(record, dict) and 'step' in record:
        records.append(record)
  return records


def truncate_log(path, step):
  """Drops JSONL lines past the checkpoint a run resumes from (they will be logged again)."""
  if not os.path.exists(path):
    return
  keep = []
  with open(path) as f:
    for line in f:
      try:
        if json.loads(line)['step'] <= step:
          keep.append(line)
      except (ValueError, KeyError):  # a line cut short by a kill
        pass
  io_utils.atomic_write_bytes(path, ''.join(keep).encode())


class MetricWriter:
  """`<workdir>/metrics.jsonl` plus TensorBoard events in `<workdir>`; a no-op when disabled.

  Only process 0 of a multi-host run should pass enabled=True.
  """

  def __init__(self, workdir, start_step=0, enabled=True, tensorboard=True):
    self.enabled = enabled
    self.jsonl = os.path.join(workdir, 'metrics.jsonl')
    self._events = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    truncate_log(self.jsonl, start_step)
    if tensorboard:
      self._events = EventWriter(workdir, start_step)

  def write(self, step, values):
    """Appends one record; `values` maps names to floats (non-finite ones stay out of TB)."""
    if not self.enabled:
      return
    record = dict(values, step=int(step))
    with open(self.jsonl, 'a') as f:
      f.write(json.dumps(record) + '\n')
    if self._events is not None:
      self._events.scalars(step, {k: float(v) for k, v in values.items()
                                  if isinstance(v, (int, float)) and k != 'seconds'})

  def close(self):
    if self._events is not None:
      self._events.close()
      self._events = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
