"""Runs the RecurSeed pipeline: train -> seeds -> crf -> evaluate -> export.

    python launch.py                                   # the embedded synthetic demo
    python launch.py --config configs/default.py --workdir runs/demo --config.train.steps=100
    python launch.py --stages=seeds,crf                # a part; finished stages are skipped

One run per workdir: a second launch on a workdir that a live run holds stops at once, naming it
(recurseed_jax/workdir_lock.py); a killed run's lock and temp files are taken over on rerun.
"""

import contextlib
import os
import socket
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_HERE = os.path.dirname(os.path.abspath(__file__))


def _fail(message):
  from recurseed_jax import cli  # fast --help
  cli.fail(message)


def _config_path(argv):
  """The --config file of argv (its :argument dropped), or the default."""
  path = None
  for i, arg in enumerate(argv[1:], 1):
    if arg.startswith('--config='):
      path = arg[len('--config='):]
    elif arg == '--config' and i + 1 < len(argv):
      path = argv[i + 1]
  return (path or os.path.join(_HERE, 'configs', 'default.py')).split(':')[0]


def _check_overrides(argv):
  """Each --config.<key>=... must name a field: one line with the nearest one otherwise.

  ml_collections would end a typo in a 50-line traceback; this loads the config file once more,
  before flag parsing, only to look the keys up.
  """
  keys = [a[2:].split('=', 1)[0][len('config.'):] for a in argv[1:]
          if a.startswith('--config.')]
  if not keys:
    return
  import importlib.util
  path = _config_path(argv)
  spec = importlib.util.spec_from_file_location('_checked_config', path)
  if spec is None or not os.path.exists(path):
    return  # config_flags reports a missing file itself
  module = importlib.util.module_from_spec(spec)
  sys.path.insert(0, _HERE)  # configs import each other as `configs.<name>`
  try:
    spec.loader.exec_module(module)
    config = module.get_config()
  finally:
    sys.path.remove(_HERE)
  from recurseed_jax import config_lib
  try:
    config_lib.check_flag_keys(config_lib.complete(config), keys)
  except config_lib.ConfigError as e:
    _fail(str(e))


# Before DEFINE_config_file, which loads the config and applies the --config.<key> overrides of
# sys.argv at once (a typo would be a traceback there).
_check_overrides(sys.argv)
try:
  config_flags.DEFINE_config_file('config', os.path.join(_HERE, 'configs', 'default.py'),
                                  'ml_collections config file', lock_config=True)
except (AttributeError, KeyError, TypeError, ValueError) as e:  # a bad --config.<key> value
  _fail(' '.join(str(e).strip('\'"').split()))
flags.DEFINE_string('workdir', 'runs/default', 'where every stage writes (resumable)')
flags.DEFINE_string('stages', None, 'comma-separated stages to run (default: config.stages)')
flags.DEFINE_bool('distributed', None, 'call jax.distributed.initialize() (multi-host); default: '
                  'when JAX_COORDINATOR_ADDRESS is set or SLURM / Open MPI runs several tasks')
flags.DEFINE_enum('local_devices', 'auto', ['auto', 'one', 'all'],
                  'multi-host GPUs per process: one (a task per GPU), all (a task per node), auto '
                  '(all under SLURM with --ntasks-per-node=1, else one)')
FLAGS = flags.FLAGS


def _parse_flags(argv):
  try:
    return FLAGS(argv)
  except flags.Error as e:
    _fail(str(e))
  except (AttributeError, KeyError, TypeError, ValueError) as e:  # a bad --config.<key> value
    _fail(' '.join(str(e).strip('\'"').split()))


def _check_workdir(workdir):
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write-test-{socket.gethostname()}-{os.getpid()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    _fail(f'workdir {workdir!r} is not writable ({e.strerror}); pass --workdir=DIR')


def main(argv):
  if len(argv) > 1:
    _fail(f'unexpected arguments: {" ".join(argv[1:])}')
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save/restore at INFO
  # A file name that is not UTF-8 (surrogate-escaped) in a log line must not end the run.
  if hasattr(sys.stdout, 'reconfigure'):
    sys.stdout.reconfigure(errors='backslashreplace')
  # Imported here so that --help and flag errors stay fast.
  from recurseed_jax import config_lib
  from recurseed_jax import stages as stages_lib
  config = FLAGS.config
  try:
    config_lib.load(config)  # completed from configs/default.py once, then validated
    names = stages_lib.parse_stages(FLAGS.stages or config.stages)
  except ValueError as e:
    _fail(str(e))
  from recurseed_jax import parallel
  # Before anything touches the devices.
  parallel.initialize_distributed(FLAGS.distributed, FLAGS.local_devices,
                                  config.parallel.heartbeat_timeout_s)
  from recurseed_jax import compile_cache
  try:
    compile_cache.enable(config.compilation_cache)
  except OSError as e:
    folder = compile_cache.cache_folder(config.compilation_cache)
    _fail(f'config.compilation_cache: cannot use {folder} ({e.strerror}); set '
          '--config.compilation_cache=off or another folder')
  try:
    parallel.check_batch_size(config.train.batch_size, parallel.make_mesh())
    if 'train_seg' in names:  # the segmenter's own batch, before RecurSeed trains for days
      parallel.check_batch_size(config_lib.segmenter_config(config).train.batch_size,
                                parallel.make_mesh(), key='seg.train.batch_size')
  except ValueError as e:
    _fail(str(e))
  import jax
  local = jax.local_device_count()
  infer_batches = {'infer.batch_size': config.infer.batch_size}
  if 'predict' in names:
    infer_batches['seg.infer.batch_size'] = config_lib.predict_config(config).infer.batch_size
  for key, batch in infer_batches.items():
    if batch % local:  # inference shards over this host's devices
      _fail(f'config.{key}={batch} must be a multiple of the {local} local devices (each takes '
            'an equal share of a batch)')
  workdir = FLAGS.workdir
  _check_workdir(workdir)
  _print_layout(config)
  with _lock_workdir(workdir):
    _run(config, names, workdir)


def _print_layout(config):
  """On process 0, before any compute: processes, devices per process, the global mesh."""
  import jax

  from recurseed_jax import parallel
  if jax.process_index() != 0:
    return
  per = {}
  for d in jax.devices():
    per.setdefault(d.process_index, []).append(d.id)
  mesh = parallel.make_mesh()
  print(f'[devices] {jax.process_count()} process(es), {jax.local_device_count()} local '
        f'{jax.devices()[0].platform} device(s) on this one; devices per process: '
        + ', '.join(f'{p}: {ids}' for p, ids in sorted(per.items()))
        + f'; global mesh {dict(mesh.shape)} ({config.parallel.mode})', flush=True)


def _lock_workdir(workdir):
  """The workdir's lock (process 0 only, see workdir_lock.py); stale temp files removed.

  Process 0 sweeps before any other process writes: they wait at a barrier in `_run` until it
  has locked, swept, written config.json and prepared the data.
  """
  import jax

  from recurseed_jax import io_utils
  from recurseed_jax import workdir_lock
  if jax.process_index() != 0:
    return contextlib.nullcontext()
  lock = workdir_lock.WorkdirLock(workdir)
  try:
    lock.acquire()
  except workdir_lock.WorkdirBusyError as e:
    _fail(str(e))
  except OSError as e:
    _fail(f'cannot lock {lock.path} ({e.strerror}); one run per workdir needs a filesystem with '
          'file locks')
  if lock.previous is not None:
    print(f'{lock.describe_previous()}; resuming', file=sys.stderr)
  removed = io_utils.remove_temp_files(workdir)  # a killed run's; we hold the lock
  if removed:
    print(f'removed {len(removed)} temp file(s) left by a killed run, e.g. {removed[0]}',
          file=sys.stderr)
  return lock


def _run(config, names, workdir):
  """Data, then the stages; input and checkpoint problems end in a one-line error."""
  from data_pipeline import providers
  from data_pipeline import splits
  from recurseed_jax import checkpoint as ckpt_lib
  from recurseed_jax import io_utils
  from recurseed_jax import processes
  from recurseed_jax import stages as stages_lib
  timeout = config.parallel.barrier_timeout_s

  def build_data():
    try:
      return providers.build(config, workdir)
    except (ValueError, FileNotFoundError) as e:
      _fail(str(e))

  try:
    # One writer: process 0 writes the config and makes the data's caches first (the synthetic
    # set, label caches); the others then read them.
    if processes.is_lead():
      io_utils.atomic_write_bytes(os.path.join(workdir, 'config.json'),
                                  config.to_json_best_effort(indent=2).encode())
      data = build_data()
      processes.barrier('launch/ready', timeout)
    else:
      processes.barrier('launch/ready', timeout)
      data = build_data()
  except processes.PeerError as e:
    _fail(str(e))
  log = print if processes.is_lead() else (lambda *a, **k: None)
  ctx = stages_lib.Context(config=config, workdir=workdir, data=data,
                           class_names=tuple(data.class_names), log=log)
  import jax

  from recurseed_jax import train as train_lib
  watchdog = processes.Watchdog(config.parallel.peer_timeout_s)
  try:
    if 'ablation' in config:  # configs/synthetic_ablation.py: every variant, then the table
      from recurseed_jax import ablation
      own = None if FLAGS.stages is None else names  # each variant's config.stages
      print(ablation.run(config, workdir, data, own, command=' '.join(sys.argv)))
      print(f'ablation: {os.path.join(workdir, "ablation.md")}, '
            f'{os.path.join(workdir, "ablation_seed_miou.png")}')
      return
    with watchdog:
      try:
        summary = stages_lib.run_stages(ctx, names)
      except jax.errors.JaxRuntimeError as e:
        if processes.count() == 1:
          raise
        watchdog.collective_failed(e)  # names the lost process and ends this one
  except processes.PeerError as e:
    _fail(str(e))
  except train_lib.Interrupted as e:  # SIGTERM / SIGINT: saved; the same command resumes
    print(str(e), file=sys.stderr)
    sys.exit(128 + e.signum)
  except train_lib.NonFiniteError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  except (splits.BadFileError, ckpt_lib.CheckpointMismatchError, FileNotFoundError) as e:
    _fail(str(e))  # a file found bad mid-run (each message names it); the rest is kept
  except OSError as e:  # a full disk, a read-only folder: the file is named, nothing half-written
    from recurseed_jax import cli
    _fail(f'{cli.describe(e)}; free space (or fix the folder) and rerun the same command to '
          'resume')
  if summary:
    print(stages_lib.format_summary(summary))
    print(f'summary: {os.path.join(workdir, "summary.json")}')


def run():
  """The `recurseed` command (pyproject.toml): the same as `python launch.py`."""
  app.run(main, flags_parser=_parse_flags)


if __name__ == '__main__':
  run()
