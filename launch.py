"""Runs the RecurSeed pipeline: train -> seeds -> crf -> evaluate -> export.

    python launch.py                                   # the embedded synthetic demo
    python launch.py --config configs/default.py --workdir runs/demo --config.train.steps=100
    python launch.py --stages=seeds,crf                # a part; finished stages are skipped
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_HERE = os.path.dirname(os.path.abspath(__file__))
config_flags.DEFINE_config_file('config', os.path.join(_HERE, 'configs', 'default.py'),
                                'ml_collections config file', lock_config=True)
flags.DEFINE_string('workdir', 'runs/default', 'where every stage writes (resumable)')
flags.DEFINE_string('stages', None, 'comma-separated stages to run (default: config.stages)')
flags.DEFINE_bool('distributed', None, 'call jax.distributed.initialize() (multi-host); default: '
                  'when JAX_COORDINATOR_ADDRESS is set or SLURM / Open MPI runs several tasks')
FLAGS = flags.FLAGS


def _fail(message):
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _check_workdir(workdir):
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write-test-{os.getpid()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    _fail(f'workdir {workdir!r} is not writable ({e.strerror}); pass --workdir=DIR')


def main(argv):
  if len(argv) > 1:
    _fail(f'unexpected arguments: {" ".join(argv[1:])}')
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save/restore at INFO
  # Imported here so that --help and flag errors stay fast.
  from recurseed_jax import stages as stages_lib
  from recurseed_jax import validate
  config = FLAGS.config
  try:
    names = stages_lib.parse_stages(FLAGS.stages or config.stages)
    validate.validate(config)
  except ValueError as e:
    _fail(str(e))
  from recurseed_jax import parallel
  parallel.initialize_distributed(FLAGS.distributed)  # before anything touches the devices
  try:
    parallel.check_batch_size(config.train.batch_size, parallel.make_mesh())
  except ValueError as e:
    _fail(str(e))
  workdir = FLAGS.workdir
  _check_workdir(workdir)
  from recurseed_jax import io_utils
  io_utils.atomic_write_bytes(os.path.join(workdir, 'config.json'),
                              config.to_json_best_effort(indent=2).encode())
  from data_pipeline import datasets
  try:
    data = datasets.build(config, workdir)
  except (ValueError, FileNotFoundError) as e:
    _fail(str(e))
  run = stages_lib.Run(config=config, workdir=workdir, data=data, class_names=data.class_names)
  from recurseed_jax import train as train_lib
  try:
    summary = stages_lib.run_stages(run, names)
  except train_lib.Interrupted as e:  # SIGTERM / SIGINT: saved; the same command resumes
    print(str(e), file=sys.stderr)
    sys.exit(128 + e.signum)
  except train_lib.NonFiniteError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  if summary:
    print(stages_lib.format_summary(summary))
    print(f'summary: {os.path.join(workdir, "summary.json")}')


if __name__ == '__main__':
  app.run(main)
