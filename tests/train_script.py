"""Tiny training runs in their own process, for the kill / signal / resume tests (test_resume.py).

    python tests/train_script.py RUN [RUN ...]     RUN = WORKDIR[,key=value[,key=value...]]

Keys: kill-after=K: SIGKILL this process once checkpoint K is committed (when batch K is asked
for); term-at=K: send this process SIGTERM while batch K is fetched (the loop saves at the end
of that step and raises train.Interrupted); nan-at=K+K...: NaN images in those batches;
max-nonfinite=N. Every run uses the same config and compiled step (one compile per process,
none with a warm JAX_COMPILATION_CACHE_DIR). Batches are a pure function of the step, the input
position a resumed run skips to. Prints one JSON line per run ({"workdir", "status", "error"});
the exit code is 128 + the signal of the last interrupted run, else 0.
"""

import json
import os
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

from absl import logging
import numpy as np

from configs import default
from recurseed_jax import train
import reference

NUM_CLASSES, CROP, BATCH, STEPS = 5, 32, 4, 6


def config(steps):
  cfg = default.get_config()
  return reference.override(cfg, {
      'model.width': 8, 'data.crop_size': CROP, 'train.batch_size': BATCH,
      'train.steps': steps, 'train.log_every': 1, 'train.checkpoint_every': 3,
      'train.keep_checkpoints': 2, 'train.ema_decay': 0.9,
      'rs.refine': 'none', 'rs.cam_only_steps': 2, 'mix.kind': 'none', 'optim.lr': 0.01,
      'model.aspp_rates': (1,), 'model.decoder_dropout': (0.5,)})


def batch(step):
  return reference.fake_batch(step, BATCH, CROP, NUM_CLASSES)


def batches(workdir, opts):
  kill_after = int(opts.get('kill-after', -1))
  term_at = int(opts.get('term-at', -1))
  nan_at = {int(k) for k in opts.get('nan-at', '').split('+') if k}

  def iterate(start):
    step = start
    while True:
      if step == kill_after:
        committed = os.path.join(workdir, 'checkpoints', str(kill_after))
        deadline = time.time() + 120
        while not os.path.isdir(committed) and time.time() < deadline:
          time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGKILL)
      if step == term_at:
        os.kill(os.getpid(), signal.SIGTERM)
      b = batch(step)
      if step in nan_at:
        b['image'][0, 0, 0, 0] = np.nan
      yield b
      step += 1
  return iterate


def main():
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  code = 0
  for spec in sys.argv[1:]:
    workdir, *pairs = spec.split(',')
    opts = dict(p.split('=') for p in pairs)
    cfg = config(STEPS)
    cfg.train.max_nonfinite = int(opts.get('max-nonfinite', 5))
    status, error = 'done', None
    try:
      train.train(cfg, workdir, NUM_CLASSES, data_iter_fn=batches(workdir, opts))
    except train.Interrupted as e:
      status, error, code = 'interrupted', str(e), 128 + e.signum
    except train.NonFiniteError as e:
      status, error = 'nonfinite', str(e)
    print(json.dumps(dict(workdir=workdir, status=status, error=error)), flush=True)
  sys.exit(code)


if __name__ == '__main__':
  main()
