"""Multi-host on one machine: 2 processes x 2 CPU devices (jax.distributed over localhost, gloo
collectives), every wait bounded so that a hang fails instead of blocking CI.

- a training step on 2 processes x 2 devices gives the 1-device step's losses and metrics to
  1e-5 relative, per step, and its state as test_parallel.py requires of 4 devices;
- the whole multi-stage pipeline (random walk included) on 2 processes, through a SIGTERM of
  one process (both save the same step) and a SIGKILL of one (the other stops with a line
  naming it), each followed by the same command, which resumes: every stage runs on both,
  images split over them, one writer per file, markers with images_per_process; from the same
  trained networks, the seeds, pseudo masks, predictions and evaluation equal a 1-process
  run's.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from test_parallel import UPDATE_RTOL
from test_parallel import _rel_norm

from recurseed_jax import io_utils
from recurseed_jax import stages
import test_launch
from test_launch import MULTI

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT = 900  # seconds any one multi-process launch may take on a busy 2-core machine


def _port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env(i, n, port, devices=2):
  return dict(os.environ, JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES=str(n),
              JAX_PROCESS_ID=str(i), JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo',
              **dict(test_launch.ENV, XLA_FLAGS=_xla_flags(devices)))


def _xla_flags(devices):
  return f"{test_launch.ENV['XLA_FLAGS']} --xla_force_host_platform_device_count={devices}"


def _start(args, n, log_dir, devices=2):
  port = _port()
  procs = []
  for i in range(n):
    log = open(os.path.join(log_dir, f'p{i}.log'), 'w')
    procs.append((subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=log,
                                   stderr=subprocess.STDOUT, env=_env(i, n, port, devices)),
                  log))
  return procs


def _wait(procs, timeout=TIMEOUT):
  """Return codes of every process; kills them all when one outlives the timeout."""
  deadline = time.time() + timeout
  codes = []
  try:
    for p, _ in procs:
      codes.append(p.wait(timeout=max(1, deadline - time.time())))
  except subprocess.TimeoutExpired:
    for p, _ in procs:
      p.kill()
    pytest.fail(f'a multi-process run did not finish within {timeout} s')
  finally:
    for _, log in procs:
      log.close()
  return codes


def _log(log_dir, i):
  with open(os.path.join(log_dir, f'p{i}.log')) as f:
    return f.read()


def _noise(line):
  """A line of a native crash dump (stack frames, the extension module list) or a progress bar."""
  s = line.strip()
  return (re.match(r'@\s+0x', s) or s.startswith('Extension modules:') or '%|' in s
          or s.startswith(('*** Check failure', 'Thread 0x', 'WARNING: All log messages')))


def _logs(log_dir, n=2, chars=2500):
  """What a failed multi-process run printed: each process's last lines without crash-dump noise,
  so that the first error (often another process's) is not cut off by the last one's dump."""
  parts = []
  for i in range(n):
    lines = [line for line in _log(log_dir, i).splitlines() if not _noise(line)]
    parts.append(f'--- process {i} ---\n' + '\n'.join(lines)[-chars:])
  return '\n'.join(parts)


def test_step_on_2_processes_matches_1_device(tmp_path):
  procs = _start([os.path.join(HERE, 'multihost_step_script.py'), str(tmp_path)], 2, tmp_path)
  codes = _wait(procs)
  assert codes == [0, 0], _logs(tmp_path)
  with open(tmp_path / 'results.json') as f:
    results = json.load(f)
  arrays = dict(np.load(tmp_path / 'results.npz'))
  for k, (m1, m2) in enumerate(zip(results['one'], results['jit'])):
    assert {'mix_seg', 'seed_coverage', 'loss'} <= set(m1) and set(m1) == set(m2)
    for key in m1:
      np.testing.assert_allclose(m2[key], m1[key], rtol=1e-5, atol=1e-6,
                                 err_msg=f'step {k + 1} {key}')
  # The state as test_parallel.py compares devices: parameters relative to the step's update,
  # optimiser state and statistics relative to their size (float32 sums in another order).
  for step in range(1, len(results['one']) + 1):
    prev = 'init/' if step == 1 else f"one/{step - 1}/['params']"
    assert _rel_norm(arrays, f"one/{step}/['params']", f"jit/{step}/['params']",
                     base=prev) < UPDATE_RTOL
    for part in ("['opt_state']", "['batch_stats']"):
      assert _rel_norm(arrays, f'one/{step}/{part}', f'jit/{step}/{part}') < UPDATE_RTOL


# --- the pipeline ------------------------------------------------------------------------------
# The smallest whole pipeline: one RecurSeed network (no baseline, no upper bound), 16 + 4
# images, 2 steps of each network: what is tested is the wiring across processes.
SMALL = ['--config.data.num_train=16', '--config.data.num_val=4', '--config.train.steps=2',
         '--config.train.cam_baseline=False', '--config.train.upper_bound=False',
         '--config.train.checkpoint_every=2', '--config.seg.train.steps=2',
         '--config.boundary.train.steps=2', '--config.crf.iterations=1']
N_TRAIN, N_VAL = 16, 4


def _launch_args(wd, *extra):
  return [os.path.join(ROOT, 'launch.py'), f'--workdir={wd}', *MULTI, *SMALL, *extra]


def _files(wd, folders):
  out = {}
  for folder in folders:
    d = os.path.join(wd, folder)
    for name in sorted(os.listdir(d)):
      out[f'{folder}/{name}'] = os.path.join(d, name)
  return out


def _same_training(src, dst):
  """dst reuses src's trained networks (their stages linked, as the ablation reuses a run)."""
  ctx = stages.Context(config=None, workdir=dst, data=None, class_names=())
  stages.link_stages(src, ctx, ['train_rs', 'train_boundary', 'train_seg'])


PRODUCTS = ('seeds/train', 'pseudo_masks', 'ir_labels', 'pseudo_masks_rw', 'pseudo_masks_rw_crf',
            'predictions/val', 'predictions/seg_val', 'predictions/seg_val_nocrf')


def _seed_differences(a, b):
  """(values differing, values, largest difference in float16 steps) of two seed files."""
  with np.load(a) as x, np.load(b) as y:
    assert x.files == y.files and np.array_equal(x['classes'], y['classes'])
    diff = n = 0
    steps = 0.0
    for k in x.files:
      if k == 'classes':
        continue
      u, v = x[k].astype(np.float32), y[k].astype(np.float32)
      diff += int((u != v).sum())
      n += u.size
      ulp = np.spacing(np.maximum(np.abs(u), np.abs(v)).astype(np.float16)).astype(np.float32)
      steps = max(steps, float((np.abs(u - v) / ulp).max()) if u.size else 0.0)
  return diff, n, steps


def _wait_for(path_fn, timeout=TIMEOUT):
  deadline = time.time() + timeout
  while time.time() < deadline and not path_fn():
    time.sleep(0.5)


def _checkpoints(folder):
  return sorted(int(d) for d in os.listdir(folder) if d.isdigit()) if os.path.isdir(folder) else []


def test_pipeline_on_2_processes_resumes_after_sigterm_and_sigkill_and_equals_1_process(
    tmp_path):
  """SIGTERM on one host: every process stops at the same step and saves it (JAX's preemption
  service). The same command resumes; SIGKILL of one process then stops the other within the
  heartbeat timeout, naming it. The same command resumes again and runs every stage on both
  processes, whose products equal a 1-process run's from the same trained networks. One
  command for the three launches, so the last two load every program from the cache."""
  two = str(tmp_path / 'two')
  steps = 12  # SIGTERM after step 2, SIGKILL at the next checkpoint: both part-way (checked)
  extra = ('--config.parallel.peer_timeout_s=10', f'--config.train.steps={steps}',
           '--config.train.checkpoint_every=4')
  args = _launch_args(two, *extra)
  ckpt = os.path.join(two, 'train', 'checkpoints')
  log = os.path.join(two, 'train', 'metrics.jsonl')
  procs = _start(args, 2, str(tmp_path))
  _wait_for(lambda: os.path.exists(log) and os.path.getsize(log) > 0)
  procs[1][0].send_signal(signal.SIGTERM)
  codes = _wait(procs, timeout=300)
  assert codes == [128 + signal.SIGTERM] * 2, (codes, _logs(tmp_path))
  saved = _checkpoints(ckpt)[-1]  # the SIGTERM's (after those every 4 steps)
  assert 0 < saved < steps
  for i in (0, 1):
    assert f'saved checkpoint {saved}' in _log(tmp_path, i)

  procs = _start(args, 2, str(tmp_path))  # resumes from `saved`
  _wait_for(lambda: _checkpoints(ckpt)[-1] > saved)
  procs[1][0].send_signal(signal.SIGKILL)
  t0 = time.time()
  codes = _wait(procs, timeout=240)
  stopped_after = time.time() - t0
  assert codes[1] == -signal.SIGKILL and codes[0] == 3, (codes, _logs(tmp_path))
  lead = _log(tmp_path, 0)
  assert 'process 1 of 2 sent no heartbeat' in lead or 'a collective between the 2' in lead, (
      lead[-3000:])
  assert stopped_after < 60, stopped_after  # peer_timeout 10 s, checked every 5 s
  assert not os.path.exists(os.path.join(two, 'stages', 'train_rs.json'))
  assert _checkpoints(ckpt)[-1] < steps  # killed part-way

  procs = _start(args, 2, str(tmp_path))  # resumes from the last checkpoint, every stage
  codes = _wait(procs)
  assert codes == [0, 0], _logs(tmp_path)
  assert _checkpoints(ckpt)[-1] == steps
  with open(log) as f:
    logged = [json.loads(line)['step'] for line in f if line.strip()]
  assert logged == sorted(set(logged)) and logged[-1] == steps  # no step logged twice
  lead, other = _log(tmp_path, 0), _log(tmp_path, 1)
  assert '[devices] 2 process(es), 2 local cpu device(s)' in lead and "{'data': 4}" in lead
  assert '[train_rs] running' in lead and '[train_rs] running' not in other  # one log
  expected = dict(seeds=N_TRAIN, crf=N_TRAIN, ir_labels=N_TRAIN, random_walk=N_TRAIN,
                  predict=N_VAL, evaluate=N_TRAIN + N_VAL)
  for name, total in expected.items():
    with open(os.path.join(two, 'stages', f'{name}.json')) as f:
      marker = json.load(f)
    assert marker['images_per_process'] == [total // 2] * 2, (name, marker)
  assert not [n for n in os.listdir(two) if '.tmp' in n]

  # 1 process x 4 devices from the same trained networks: the same files.
  one = str(tmp_path / 'one')
  _same_training(two, one)
  r = test_launch.launch(*_launch_args(one, *extra)[1:], timeout=TIMEOUT,
                         XLA_FLAGS=_xla_flags(4))
  assert r.returncode == 0, r.stderr[-3000:]
  a, b = _files(two, PRODUCTS), _files(one, PRODUCTS)
  assert set(a) == set(b) and len(a) == 5 * N_TRAIN + 3 * N_VAL
  same = lambda k: open(a[k], 'rb').read() == open(b[k], 'rb').read()
  # Seed files: another number of images per device (4 here, 2 there) rounds a few values one
  # float16 step apart, and a pixel whose classes are that close can flip in the masks made from
  # them (measured: at most 1 pixel of one random walk + CRF mask in 5 runs). Masks and
  # predictions: at most 1 % of the files differ, in at most 0.1 % of all their pixels.
  masks = {k: (io_utils.load_mask_png(a[k]), io_utils.load_mask_png(b[k]))
           for k in a if k.endswith('.png')}
  differ = [k for k in masks if not same(k)]
  flipped = sum(int((masks[k][0] != masks[k][1]).sum()) for k in differ)
  pixels = sum(x.size for x, _ in masks.values())
  assert len(differ) <= 0.01 * len(masks) + 1 and flipped <= 1e-3 * pixels, (differ, flipped)
  seeds = [_seed_differences(a[k], b[k]) for k in a if k.endswith('.npz')]
  differing, values = sum(d for d, _, _ in seeds), sum(n for _, n, _ in seeds)
  assert differing <= 0.01 * values and max(s for _, _, s in seeds) <= 1.0, seeds
  with open(os.path.join(two, 'summary.json')) as f, open(os.path.join(one, 'summary.json')) as g:
    s2, s1 = json.load(f), json.load(g)
  # The same products, and mIoUs within what those flipped pixels can move (mIoU's scale is 1).
  miou = lambda s: {k: v for k, v in s.items() if k.endswith('_miou')}
  assert miou(s2).keys() == miou(s1).keys()
  assert all(abs(miou(s2)[k] - miou(s1)[k]) <= 2e-3 for k in miou(s1)), (miou(s2), miou(s1))
