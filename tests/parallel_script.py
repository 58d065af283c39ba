"""The same 3 training steps on 1 device, jit-sharded on 4 and pmap on 4 (for test_parallel.py).

    python tests/parallel_script.py OUT_DIR

Needs 4 devices, so it sets XLA_FLAGS before jax is imported (hence a process of its own). Writes
OUT_DIR/results.npz ('<run>/<step>/<path>': the saved state after each step, flattened; 'init/',
'<mode>/free/' params; dropout masks) and OUT_DIR/results.json (per run: per-step metrics; the
errors for a batch of 6 on 4 devices).
Dropout is 0 in the step comparison: under pmap every device draws its own mask, so only the
dropout-free step can match bit for bit (up to float summation order); `dropout_*` checks that
under jit the mask does not depend on the device count.
"""

import json
import os
import sys

if __name__ == '__main__':  # imported by multihost_step_script.py, which sets its own devices
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=4')
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

import flax.linen as nn
import jax
import numpy as np

from configs import default
from recurseed_jax import parallel
from recurseed_jax import train
import reference

NUM_CLASSES, CROP, BATCH, STEPS = 5, 32, 8, 3


def config(mode, batch_size=BATCH):
  cfg = default.get_config()
  return reference.override(cfg, {
      'model.width': 8, 'data.crop_size': CROP, 'train.batch_size': batch_size,
      'train.steps': STEPS, 'rs.refine': 'none', 'rs.cam_only_steps': 1, 'mix.start_step': 0,
      'model.aspp_dropout': 0.0, 'model.decoder_dropout': (0.0,), 'model.aspp_rates': (1,),
      'optim.lr': 0.01,
      'parallel.mode': mode})


def batch(step):
  return reference.fake_batch(step, BATCH, CROP, NUM_CLASSES)


def initial_state(s):
  """A step-0 state, He-initialised in numpy from the traced shapes (no init to compile)."""
  rng = np.random.default_rng(0)
  shapes = train.abstract_state(s.config, s.model, s.input_shape)

  def init(path, x):
    name = jax.tree_util.keystr(path)
    if name.endswith("['kernel']"):
      return (rng.normal(size=x.shape) * np.sqrt(2.0 / np.prod(x.shape[:-1]))).astype(x.dtype)
    return (np.ones if name.endswith("['scale']") or name.endswith("['var']") else np.zeros)(
        x.shape, x.dtype)

  variables = jax.tree_util.tree_map_with_path(
      init, dict(params=shapes.params, batch_stats=shapes.batch_stats))
  return train.init_state(s.config, variables['params'], variables['batch_stats'],
                          s.model.num_classes)


def _scalars(metrics):
  # seed_confusion (a matrix of pixel counts) is left out: one pixel flipped by fp32 rounding
  # changes it by a count, far past the scalars' tolerance.
  return {k: float(v) for k, v in jax.device_get(metrics).items() if k != 'seed_confusion'}


def flat(prefix, tree):
  return {prefix + jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]}


def run_mode(mode, devices, states):
  """Steps k = 0, 1, 2 of `mode`, each from states[k] (the 1-device states: per-step equality
  without compounding), then 3 free-running steps from states[0]."""
  s = train.setup(config(mode), NUM_CLASSES, mesh=parallel.make_mesh(devices))
  step = s.step(use_mix=True)
  forced, arrays = [], {}
  for k in range(STEPS):
    state, m = step(parallel.replicate(states[k], s.mesh), s.put_batch(batch(k)))
    forced.append(_scalars(m))
    arrays.update(flat(f'{mode}/{k + 1}/', state.saveable()))
  state, free = parallel.replicate(states[0], s.mesh), []
  for k in range(STEPS):
    state, m = step(state, s.put_batch(batch(k)))
    free.append(_scalars(m))
  arrays.update(flat(f'{mode}/free/', state.params))
  return forced, free, arrays


def dropout_masks():
  """A flax Dropout under jit with the input sharded over 1 and over 4 devices."""
  x = np.ones((BATCH, 8, 8, 16), np.float32)
  key = jax.random.PRNGKey(3)
  out = {}
  for n in (1, 4):
    mesh = parallel.make_mesh(jax.devices()[:n])
    fn = jax.jit(lambda x, k: nn.Dropout(0.5).apply({}, x, deterministic=False,
                                                    rngs={'dropout': k}),
                 in_shardings=(parallel.batch_sharding(mesh), parallel.replicated(mesh)))
    out[n] = np.asarray(fn(x, key))
  return out


def main():
  out_dir = sys.argv[1]
  assert jax.device_count() == 4, jax.devices()
  # One device: the reference run (3 steps), its state after each step kept.
  s = train.setup(config('jit'), NUM_CLASSES, mesh=parallel.make_mesh(jax.devices()[:1]))
  states = [initial_state(s)]
  step, results, arrays = s.step(use_mix=True), {'one': []}, {}
  for k in range(STEPS):
    state, m = step(parallel.replicate(states[k], s.mesh), s.put_batch(batch(k)))
    results['one'].append(_scalars(m))
    states.append(jax.device_get(state))
    arrays.update(flat(f'one/{k + 1}/', states[-1].saveable()))
  arrays.update(flat('init/', states[0].params))
  for mode in ('jit', 'pmap'):
    results[mode], results[mode + '/free'], more = run_mode(mode, jax.devices(), states)
    arrays.update(more)
  masks = dropout_masks()
  arrays['dropout_1'], arrays['dropout_4'] = masks[1], masks[4]
  errors = {}
  for mode in ('jit', 'pmap'):
    try:
      train.setup(config(mode, batch_size=6), NUM_CLASSES)
    except ValueError as e:
      errors[mode] = str(e)
  results['errors'] = errors
  np.savez(os.path.join(out_dir, 'results.npz'), **arrays)
  with open(os.path.join(out_dir, 'results.json'), 'w') as f:
    json.dump(results, f)


if __name__ == '__main__':
  main()
