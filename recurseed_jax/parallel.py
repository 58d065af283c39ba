"""Data parallelism: the device mesh, placement of state and batches, the step under jit or pmap.

One step function (train.make_train_step) runs in two modes (config.parallel.mode):

* 'jit' (default): jitted with NamedShardings over a 1-D Mesh(devices, ('data',)): the batch is
  sharded on its leading axis, the train state replicated. The step sees the global batch, so
  BatchNorm statistics, losses and the CertainMix pairing cover the global batch and the result
  does not depend on the device count; XLA inserts the all-reduces. Random bits do not depend on
  the sharding either, as long as `jax_threefry_partitionable` is on (the default since JAX 0.5;
  `check_rng_partitionable` enforces it).
* 'pmap': the same step under jax.pmap(axis_name='data'), state broadcast (in_axes=None) and
  returned replicated (out_axes=None). Each device sees its shard of the batch; the step makes
  every batch-level quantity global with collectives (BatchNorm statistics, gradients, loss
  denominators, the mixing pairs). Dropout is the one exception: each device draws its own mask,
  so pmap equals the other modes exactly only without dropout.

Multi-host: every process reads its own slice of the global batch (data_pipeline shards by
process index) and `shard_batch` assembles the global array; the state is replicated on every
device of every process; Orbax coordinates checkpoint writes and only process 0 writes logs.
"""

import functools
import os

import jax
from jax import lax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

AXIS = 'data'
MODES = ('jit', 'pmap')


LOCAL_DEVICES = ('auto', 'one', 'all')  # launch.py --local_devices


def _gpus_on_this_node(env):
  """This node's GPU ids, from CUDA_VISIBLE_DEVICES, SLURM's count or nvidia-smi; [] if none."""
  visible = env.get('CUDA_VISIBLE_DEVICES', '').strip()
  if visible:
    return list(range(len([v for v in visible.split(',') if v.strip()])))
  count = env.get('SLURM_GPUS_ON_NODE', '').strip()
  if count.isdigit():
    return list(range(int(count)))
  try:
    import subprocess
    out = subprocess.run(['nvidia-smi', '-L'], capture_output=True, text=True, timeout=30)
  except (OSError, subprocess.SubprocessError):
    return []
  return list(range(sum(line.startswith('GPU ') for line in out.stdout.splitlines())))


def local_device_ids(mode='auto', env=None):
  """The GPUs this process drives: None (JAX's default) or a list for jax.distributed.

  'one': one GPU per process (JAX's default under SLURM / Open MPI: the process's local rank).
  'all': every GPU of the node (one process per node). 'auto': 'all' when SLURM runs one task
  per node (--ntasks-per-node=1), else 'one'. Under SLURM JAX would otherwise give a lone task
  per node GPU 0 only.
  """
  env = os.environ if env is None else env
  if mode not in LOCAL_DEVICES:
    raise ValueError(f'--local_devices={mode!r} is not one of: {", ".join(LOCAL_DEVICES)}')
  if mode == 'auto':
    per_node = env.get('SLURM_NTASKS_PER_NODE', '').split('(')[0]
    mode = 'all' if 'SLURM_JOB_ID' in env and per_node == '1' else 'one'
  if mode == 'one':
    return None
  return _gpus_on_this_node(env) or None  # no GPU (CPU): nothing to restrict


def initialize_distributed(enable=None, local_devices='auto', heartbeat_timeout_s=100):
  """Calls jax.distributed.initialize() when this process is one of several; returns whether.

  enable=None decides from the environment: JAX_COORDINATOR_ADDRESS is set (with JAX_NUM_PROCESSES
  and JAX_PROCESS_ID, or a cluster JAX detects), or a SLURM / Open MPI job runs more than one
  task. local_devices: see local_device_ids. Call it before anything touches the devices.
  """
  env = os.environ
  if enable is None:
    tasks = max(int(env.get(k, '1') or 1) for k in ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'))
    enable = bool(env.get('JAX_COORDINATOR_ADDRESS')) or tasks > 1
  if not enable:
    return False
  kwargs = {}
  if env.get('JAX_NUM_PROCESSES') and env.get('JAX_PROCESS_ID'):
    kwargs = dict(num_processes=int(env['JAX_NUM_PROCESSES']),
                  process_id=int(env['JAX_PROCESS_ID']))
  ids = local_device_ids(local_devices, env)
  if ids is not None:
    kwargs['local_device_ids'] = ids
  if heartbeat_timeout_s != 100:
    kwargs['heartbeat_timeout_seconds'] = int(heartbeat_timeout_s)
  jax.distributed.initialize(**kwargs)
  return True


def check_rng_partitionable():
  if not jax.config.jax_threefry_partitionable:
    raise ValueError('jax_threefry_partitionable is off: random bits would depend on the device '
                     'count. Unset JAX_THREEFRY_PARTITIONABLE (on by default since JAX 0.5).')


def make_mesh(devices=None):
  """A 1-D mesh ('data',) over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (AXIS,))


def check_batch_size(batch_size, mesh, key='train.batch_size'):
  """Fails before any compute when the global batch cannot be split evenly."""
  n, procs = mesh.size, jax.process_count()
  if batch_size <= 0 or batch_size % n:
    raise ValueError(f'config.{key}={batch_size} must be a positive multiple of the '
                     f'{n} devices (data parallel: each device takes an equal share); use a '
                     f'multiple of {n}')
  if batch_size % procs:
    raise ValueError(f'config.{key}={batch_size} must be a multiple of the {procs} '
                     'processes (each feeds an equal share)')


def replicated(mesh):
  return NamedSharding(mesh, P())


def batch_sharding(mesh):
  return NamedSharding(mesh, P(AXIS))


def axis_name(mode):
  """The collective axis the step and the model's BatchNorm use: only pmap needs one."""
  if mode not in MODES:
    raise ValueError(f'config.parallel.mode={mode!r} is not one of: {", ".join(MODES)}')
  return AXIS if mode == 'pmap' else None


def replicate(tree, mesh):
  """Places a pytree (identical on every process) replicated on every device of the mesh."""
  sharding = replicated(mesh)

  def put(x):
    if isinstance(x, jax.Array) and x.sharding == sharding:
      return x
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))

  return jax.tree.map(put, tree)


def shard_batch(batch, mesh, mode):
  """This process's slice of the global batch (numpy) -> global device arrays.

  'jit' gets [B, ...] sharded on the batch axis; 'pmap' gets [devices, B / devices, ...], one
  row per device.
  """
  local = len(mesh.local_devices)
  sharding = batch_sharding(mesh)

  def put(x):
    x = np.asarray(x)
    shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
    if mode == 'pmap':
      x = x.reshape((local, x.shape[0] // local) + x.shape[1:])
      shape = (mesh.size, shape[0] // mesh.size) + shape[1:]
    return jax.make_array_from_process_local_data(sharding, x, shape)

  return jax.tree.map(put, batch)


def compile_step(step_fn, mesh, mode, use_mix=False, donate=True):
  """step_fn(state, batch, use_mix) -> a jitted / pmapped f(state, batch) -> (state, metrics).

  The state goes in and comes out replicated (same layout in both modes, so checkpoints do not
  depend on the mode); the batch comes from `shard_batch`. Donating the state lets XLA update
  it in place. The result has `.lower(state, batch)` for ahead-of-time compiles (benchmarks).
  """
  fn = functools.partial(step_fn, use_mix=use_mix)
  donate_argnums = (0,) if donate else ()
  if mode == 'jit':
    rep = replicated(mesh)
    return jax.jit(fn, in_shardings=(rep, batch_sharding(mesh)), out_shardings=rep,
                   donate_argnums=donate_argnums)
  axis_name(mode)  # Validates the mode.
  return jax.pmap(fn, axis_name=AXIS, in_axes=(None, 0), out_axes=None,
                  devices=list(mesh.devices.flat), donate_argnums=donate_argnums)


# --- collectives for the step under pmap (no-ops when axis is None) ------------------------------


def psum(tree, axis):
  return tree if axis is None else lax.psum(tree, axis)


def gather_batch(tree, axis):
  """Local batch shards -> the global batch, in device order (same on every device)."""
  if axis is None:
    return tree
  return jax.tree.map(lambda x: lax.all_gather(x, axis, tiled=True), tree)


def local_rows(tree, axis, size):
  """This device's `size` rows of a global batch made by `gather_batch`."""
  if axis is None:
    return tree
  start = lax.axis_index(axis) * size
  return jax.tree.map(lambda x: lax.dynamic_slice_in_dim(x, start, size), tree)


def device_key(key, axis):
  """A per-device key under pmap (dropout masks), the key itself otherwise."""
  return key if axis is None else jax.random.fold_in(key, lax.axis_index(axis))
