"""The host-side metric writer: JSONL log and hand-written TensorBoard event files.

recurseed_jax never imports tensorflow; the tests do, to read the event files back with
TensorFlow's own reader (which checks the TFRecord CRCs).
"""

import glob
import json
import os
import struct

import numpy as np

from recurseed_jax import metrics


def _read_events(path):
  import tensorflow as tf
  return list(tf.compat.v1.train.summary_iterator(path))


def test_crc32c_known_values():
  assert metrics.crc32c(b'123456789') == 0xE3069283  # the CRC-32C check value
  assert metrics.crc32c(b'') == 0
  assert metrics.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720, 32 bytes of zeros


def test_tfrecord_frame_layout():
  frame = metrics.tfrecord(b'abc')
  assert len(frame) == 8 + 4 + 3 + 4
  assert struct.unpack('<Q', frame[:8])[0] == 3 and frame[12:15] == b'abc'


def test_writer_round_trip_through_tensorflow(tmp_path):
  wd = str(tmp_path / 'run')
  with metrics.MetricWriter(wd) as w:
    w.write(1, dict(loss=2.5, lr=0.1, seconds=3.0))
    w.write(2, dict(loss=float('nan'), lr=0.09, img_per_s=123.5))
  with open(os.path.join(wd, 'metrics.jsonl')) as f:
    logs = [json.loads(line) for line in f]
  assert [m['step'] for m in logs] == [1, 2] and np.isnan(logs[1]['loss'])
  files = glob.glob(os.path.join(wd, 'events.out.tfevents.*'))
  assert len(files) == 1
  events = _read_events(files[0])
  assert events[0].file_version == 'brain.Event:2'
  got = {(e.step, v.tag): v.simple_value for e in events[1:] for v in e.summary.value}
  # Non-finite values stay out of TensorBoard (they are in the JSONL log); so do the seconds.
  assert got == {(1, 'loss'): 2.5, (1, 'lr'): np.float32(0.1), (2, 'lr'): np.float32(0.09),
                 (2, 'img_per_s'): 123.5}
  assert all(e.wall_time > 1e9 for e in events)


def test_resume_truncates_the_log_and_marks_the_restart(tmp_path):
  wd = str(tmp_path / 'run')
  with metrics.MetricWriter(wd) as w:
    for step in (1, 2, 3, 4):
      w.write(step, dict(loss=float(step)))
  with open(os.path.join(wd, 'metrics.jsonl'), 'a') as f:
    f.write('{"loss": 5.0, "st')  # a line cut short by a kill
  with metrics.MetricWriter(wd, start_step=2) as w:
    w.write(3, dict(loss=30.0))
  with open(os.path.join(wd, 'metrics.jsonl')) as f:
    logs = [json.loads(line) for line in f]
  assert [(m['step'], m['loss']) for m in logs] == [(1, 1.0), (2, 2.0), (3, 30.0)]
  files = sorted(glob.glob(os.path.join(wd, 'events.out.tfevents.*')), key=os.path.getmtime)
  assert len(files) == 2
  restart = [e for e in _read_events(files[1]) if e.HasField('session_log')]
  assert [(e.step, e.session_log.status) for e in restart] == [(3, 1)]  # SessionLog.START


def test_disabled_writer_writes_nothing(tmp_path):
  wd = str(tmp_path / 'run')
  with metrics.MetricWriter(wd, enabled=False) as w:
    w.write(1, dict(loss=1.0))
  assert not os.path.exists(wd)


def test_no_tensorboard(tmp_path):
  wd = str(tmp_path / 'run')
  with metrics.MetricWriter(wd, tensorboard=False) as w:
    w.write(1, dict(loss=1.0))
  assert os.listdir(wd) == ['metrics.jsonl']
