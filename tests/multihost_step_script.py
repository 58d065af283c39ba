"""One process of a 2-process x 2-device run of 3 training steps (for test_multihost.py).

    JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=i \
        python tests/multihost_step_script.py OUT_DIR

Each process first runs the 1-device reference locally (its first device only, no collective),
keeping the state after each step, then the same steps on the global mesh of both processes'
4 devices, each from the reference's state before it (per-step equality, nothing compounds);
every process feeds its own rows of the global batch, as the data pipeline does. Process 0
writes OUT_DIR/results.npz and results.json in parallel_script.py's layout ('one', 'jit').
"""

import json
import os
import sys

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=2')
os.environ.setdefault('JAX_CPU_COLLECTIVES_IMPLEMENTATION', 'gloo')
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

import jax
import numpy as np

import parallel_script as ps
from recurseed_jax import parallel
from recurseed_jax import train


def main():
  out_dir = sys.argv[1]
  parallel.initialize_distributed(True)
  assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()
  one = train.setup(ps.config('jit'), ps.NUM_CLASSES,
                    mesh=parallel.make_mesh(jax.local_devices()[:1]))
  states = [ps.initial_state(one)]
  step1, results, arrays = one.step(use_mix=True), {'one': [], 'jit': []}, {}
  mesh1 = one.mesh

  def local_batch(k):  # one process's view of a 1-device mesh is the whole batch
    return jax.tree.map(lambda x: jax.device_put(x, parallel.batch_sharding(mesh1)),
                        {key: ps.batch(k)[key] for key in train.BATCH_KEYS})

  for k in range(ps.STEPS):
    state, m = step1(parallel.replicate(states[k], mesh1), local_batch(k))
    results['one'].append(ps._scalars(m))
    states.append(jax.device_get(state))
    arrays.update(ps.flat(f'one/{k + 1}/', states[-1].saveable()))
  arrays.update(ps.flat('init/', states[0].params))
  s = train.setup(ps.config('jit'), ps.NUM_CLASSES)  # the global mesh
  step = s.step(use_mix=True)
  rows = ps.BATCH // jax.process_count()
  lo = jax.process_index() * rows
  for k in range(ps.STEPS):
    mine = {key: v[lo:lo + rows] for key, v in ps.batch(k).items()}
    state, m = step(parallel.replicate(states[k], s.mesh), s.put_batch(mine))
    results['jit'].append(ps._scalars(m))
    arrays.update(ps.flat(f'jit/{k + 1}/', state.saveable()))
  if jax.process_index() == 0:
    np.savez(os.path.join(out_dir, 'results.npz'), **arrays)
    with open(os.path.join(out_dir, 'results.json'), 'w') as f:
      json.dump(results, f)


if __name__ == '__main__':
  main()
