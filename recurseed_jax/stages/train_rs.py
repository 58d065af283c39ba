"""Stage train_rs: the RecurSeed network (and, when the config asks, its plain-CAM baseline and
fully supervised upper bound), each in its own workdir subfolder, resumable from checkpoints.

With config.train.side_by_side, on one device and one process, the baseline and the upper bound
train in a second thread while the RecurSeed network trains in this one: on the 2-core CPU one
small network's step leaves part of the second core idle, and two demo networks' steps at once
ran 1.43x the images per second of one after another (bench/side_by_side.py), bit for bit the
same numbers (each network's program and input are what they are alone; tests/test_train_rs.py).
Elsewhere, one after another.
"""

import threading

import jax

from recurseed_jax import train as train_lib
from recurseed_jax.stages import products

OUTPUTS = ('train', 'cam_baseline', 'upper_bound')


def side_by_side(config):
  """Whether the extra networks train beside the RecurSeed network: one device and one process
  only, since two programs sharded over several devices could interleave their collectives."""
  return bool(config.train.side_by_side) and jax.process_count() == 1 and jax.device_count() == 1


def train_side_by_side(first, rest):
  """Runs first(signals) here and rest(signals) in a second thread, sharing one Signals.

  A signal stops both at their next step (each saves its checkpoint); when one fails, the other
  is stopped too; the thread is always joined, so nothing is left writing. Raises a failure of
  either (a real error before an Interrupted that only echoes it).
  """
  with train_lib.Signals() as signals:
    errors = []

    def others():
      try:
        rest(signals)
      except BaseException as e:  # handed to the main thread below
        errors.append(e)
        signals.stop()

    thread = threading.Thread(target=others, name='train_rs side by side', daemon=True)
    thread.start()
    try:
      first(signals)
    except BaseException as e:
      errors.insert(0, e)
      signals.stop()
    finally:
      thread.join()
  if errors:
    real = [e for e in errors if not isinstance(e, train_lib.Interrupted)]
    raise (real or errors)[0]


def run(ctx):
  def batches(start_step):  # this process's slice of every global batch (multi-host)
    return ctx.data.train_batches(start_step, process_index=jax.process_index(),
                                  process_count=jax.process_count())

  def fit(runs, **kwargs):
    for name, supervision in runs:
      train_lib.train(ctx.config, ctx.path(name), ctx.num_classes, supervision=supervision,
                      desc=f'train {products.RUN_TITLES[name]}', data_iter_fn=batches, **kwargs)

  runs = products.enabled_runs(ctx.config)
  if len(runs) > 1 and side_by_side(ctx.config):
    train_side_by_side(lambda signals: fit(runs[:1], signals=signals, bar_position=0),
                       lambda signals: fit(runs[1:], signals=signals, bar_position=1))
  else:
    fit(runs)
  return dict(runs=[name for name, _ in runs])
