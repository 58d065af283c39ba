"""The train_rs stage: its three networks side by side give the numbers of one after another; a
signal or a failure in either thread stops both, and the error that matters is raised."""

import os
import signal
import threading
import time

import jax
import numpy as np
import pytest

from recurseed_jax import stages
from recurseed_jax import train
from recurseed_jax.stages import products
from recurseed_jax.stages import train_rs
import reference

NUM_CLASSES = 3
CROP = 32
BATCH = 4


class _Data:
  """ctx.data's train_batches: step-seeded numpy batches; records the thread of each call."""

  def __init__(self):
    self.threads = []

  def train_batches(self, start_step, process_index=0, process_count=1):
    del process_index, process_count
    self.threads.append(threading.current_thread().name)

    def gen():
      step = start_step
      while True:
        yield reference.fake_batch(step, BATCH, CROP, NUM_CLASSES)
        step += 1

    return gen()


def _run_stage(workdir, side_by_side):
  cfg = reference.default_config(**{
      'model.width': 8, 'data.crop_size': CROP, 'data.num_classes': NUM_CLASSES,
      'train.batch_size': BATCH, 'train.steps': 2, 'train.checkpoint_every': 2,
      'train.log_every': 1, 'train.side_by_side': side_by_side, 'rs.cam_only_steps': 1,
      'mix.kind': 'none', 'rs.refine': 'none', 'train.upper_bound': False})
  data = _Data()
  ctx = stages.Context(config=cfg, workdir=str(workdir), data=data,
                       class_names=tuple(f'c{i}' for i in range(NUM_CLASSES)))
  assert train_rs.run(ctx) == dict(runs=['train', 'cam_baseline'])
  variables = {name: train.restore_variables(cfg, ctx.path(name), NUM_CLASSES)[1]
               for name, _ in products.enabled_runs(cfg)}
  return variables, data.threads


@pytest.mark.slow
def test_side_by_side_trains_the_same_networks_as_one_after_another(tmp_path):
  together, threads = _run_stage(tmp_path / 'together', True)
  # The RecurSeed network here, the baseline in the second thread (the upper bound would follow
  # it there; left out to keep the test short: every network costs seconds of tracing).
  assert sorted(threads) == [threading.main_thread().name, 'train_rs side by side']
  apart, threads = _run_stage(tmp_path / 'apart', False)
  assert threads == [threading.main_thread().name] * 2
  for name in together:
    a, b = jax.tree.leaves(together[name]), jax.tree.leaves(apart[name])
    assert len(a) == len(b) > 0
    assert all(np.array_equal(x, y) for x, y in zip(a, b)), name  # bit for bit


def _until_stopped(signals, seen, name):
  deadline = time.monotonic() + 30  # bounded: a missed stop fails the test instead of hanging
  while signals.received is None:
    if time.monotonic() > deadline:
      raise AssertionError(f'{name} was never stopped')
    time.sleep(0.01)
  seen.append(name)
  raise train.Interrupted(f'{name} stopped', signals.received)


@pytest.mark.parametrize('failing', ['first', 'rest'])
def test_a_failure_in_either_thread_stops_the_other_and_is_raised(failing):
  seen = []

  def fail(signals):
    del signals
    raise ValueError(f'{failing} failed')

  def wait(name):
    return lambda signals: _until_stopped(signals, seen, name)

  other = 'rest' if failing == 'first' else 'first'
  first, rest = (fail, wait(other)) if failing == 'first' else (wait(other), fail)
  with pytest.raises(ValueError, match=f'{failing} failed'):
    train_rs.train_side_by_side(first, rest)
  assert seen == [other]  # stopped, and joined before the error came out


def test_sigterm_stops_both_and_raises_interrupted():
  seen = []
  timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM))
  before = signal.getsignal(signal.SIGTERM)
  timer.start()
  try:
    with pytest.raises(train.Interrupted) as e:
      train_rs.train_side_by_side(lambda s: _until_stopped(s, seen, 'first'),
                                  lambda s: _until_stopped(s, seen, 'rest'))
  finally:
    timer.cancel()
  assert sorted(seen) == ['first', 'rest'] and e.value.signum == signal.SIGTERM
  assert signal.getsignal(signal.SIGTERM) is before  # the handlers are put back


def test_side_by_side_only_on_one_device_and_one_process():
  cfg = reference.default_config()
  assert train_rs.side_by_side(cfg) == (jax.device_count() == 1 and jax.process_count() == 1)
  cfg.train.side_by_side = False
  assert not train_rs.side_by_side(cfg)
