"""Exact resume after SIGKILL and SIGTERM, the non-finite guard, EMA seeds, TensorBoard output.

Training runs in subprocesses (tests/train_script.py), all with one config, so the step compiles
once: a persistent compilation cache shared by the processes serves the others.

  P1: A (6 steps straight), C (SIGTERM during step 3), D (NaN input at step 2),
      E (NaN inputs at steps 2 and 3 with train.max_nonfinite=2)
  P2: B (SIGKILL once checkpoint 3 is committed)
  P3: B and C resumed to step 6
"""

import glob
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from recurseed_jax import checkpoint as ckpt_lib
from recurseed_jax import train
import test_launch
import train_script

pytestmark = pytest.mark.slow

HERE = os.path.dirname(os.path.abspath(__file__))
LOSS_KEYS = ('loss', 'cls', 'cam', 'seg', 'seed_coverage', 'seed_precision', 'lr', 'nonfinite')


def _run(env, *specs):
  r = subprocess.run([sys.executable, os.path.join(HERE, 'train_script.py'), *specs], env=env,
                     capture_output=True, text=True, timeout=600)
  statuses = {}
  for line in r.stdout.splitlines():
    if line.startswith('{'):
      d = json.loads(line)
      statuses[os.path.basename(d['workdir'])] = d
  return r, statuses


def _metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _restore(workdir, step=None):
  cfg = train_script.config(train_script.STEPS)
  model = train.build_model(cfg, train_script.NUM_CLASSES)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  like = train.abstract_state(cfg, model, (1, train_script.CROP, train_script.CROP, 3), device)
  with ckpt_lib.Checkpoints(os.path.join(workdir, 'checkpoints')) as ckpts:
    return ckpts.latest_step(), jax.device_get(ckpts.restore(like.saveable(), step))


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('resume')
  wd = {name: str(root / name) for name in 'ABCDE'}
  env = dict(os.environ, **test_launch.ENV,  # the launches' fast compiles
             JAX_COMPILATION_CACHE_DIR=str(root / 'jax_cache'),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='-1')
  p1, s1 = _run(env, wd['A'], f"{wd['C']},term-at=2", f"{wd['D']},nan-at=1",
                f"{wd['E']},nan-at=1+2,max-nonfinite=2")
  assert set(s1) == set('ACDE'), p1.stderr[-4000:]
  sigterm_checkpoint = _restore(wd['C'])
  p2, _ = _run(env, f"{wd['B']},kill-after=3")
  killed = dict(returncode=p2.returncode, latest=_restore(wd['B'])[0],
                logged=[m['step'] for m in _metrics(wd['B'])])
  p3, s3 = _run(env, wd['B'], wd['C'])
  assert p3.returncode == 0 and set(s3) == set('BC'), p3.stderr[-4000:]
  return dict(wd=wd, p1=p1, s1=s1, sigterm_checkpoint=sigterm_checkpoint, killed=killed)


def _assert_same_run(workdir_a, workdir_b):
  a, b = _metrics(workdir_a), _metrics(workdir_b)
  assert [m['step'] for m in a] == [m['step'] for m in b] == [1, 2, 3, 4, 5, 6]
  for ma, mb in zip(a, b):
    for key in LOSS_KEYS:
      assert ma[key] == mb[key], (ma['step'], key, ma[key], mb[key])
  (step_a, tree_a), (step_b, tree_b) = _restore(workdir_a), _restore(workdir_b)
  assert step_a == step_b == 6
  for path, x in jax.tree_util.tree_flatten_with_path(tree_a)[0]:
    y = dict(jax.tree_util.tree_flatten_with_path(tree_b)[0])[path]
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def test_sigkill_then_resume_matches_a_straight_run(runs):
  killed = runs['killed']
  assert killed['returncode'] == -9  # SIGKILL: no handler ran
  assert killed['latest'] == 3
  assert killed['logged'][:3] == [1, 2, 3]  # the log reaches the checkpoint it can resume from
  _assert_same_run(runs['wd']['A'], runs['wd']['B'])


def test_sigterm_saves_a_restorable_checkpoint_and_resumes_exactly(runs):
  p1, status = runs['p1'], runs['s1']['C']
  assert p1.returncode == 143  # 128 + SIGTERM, as launch.py exits
  assert status['status'] == 'interrupted'
  assert 'SIGTERM' in status['error'] and 'after step 3' in status['error']
  step, tree = runs['sigterm_checkpoint']
  assert step == 3 and int(tree['step']) == 3
  assert {'params', 'batch_stats', 'opt_state', 'rng', 'ema_params', 'nonfinite'} <= set(tree)
  _assert_same_run(runs['wd']['A'], runs['wd']['C'])


def test_nonfinite_step_is_skipped_and_reported(runs):
  assert runs['s1']['D']['status'] == 'done'
  a, d = _metrics(runs['wd']['A']), _metrics(runs['wd']['D'])
  assert d[0]['loss'] == a[0]['loss'] and d[0]['nonfinite'] == 0
  assert not np.isfinite(d[1]['loss']) and d[1]['nonfinite'] == 1 and d[1]['nonfinite_run'] == 1
  assert all(np.isfinite(m['loss']) and m['nonfinite'] == 1 for m in d[2:])
  assert 'step 2: non-finite loss or gradient, update skipped' in runs['p1'].stderr
  _, tree = _restore(runs['wd']['D'])
  assert int(tree['nonfinite']) == 1 and int(tree['nonfinite_run']) == 0
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(tree))


def test_too_many_nonfinite_steps_in_a_row_stop_naming_the_steps(runs):
  status = runs['s1']['E']
  assert status['status'] == 'nonfinite'
  assert 'stopped at step 3' in status['error'] and 'steps 2..3' in status['error']


def test_ema_params_and_seed_from_ema(runs):
  _, tree = _restore(runs['wd']['A'])
  cfg = train_script.config(train_script.STEPS)
  cfg.rs.seed_from_ema = True
  _, variables = train.restore_variables(cfg, runs['wd']['A'], train_script.NUM_CLASSES)
  ema, params = tree['ema_params'], tree['params']
  same = jax.tree.map(np.array_equal, jax.device_get(variables['params']), ema)
  assert all(jax.tree.leaves(same))
  assert any(not np.allclose(e, p) for e, p in zip(jax.tree.leaves(ema), jax.tree.leaves(params)))
  cfg.rs.seed_from_ema = False
  _, variables = train.restore_variables(cfg, runs['wd']['A'], train_script.NUM_CLASSES)
  same = jax.tree.map(np.array_equal, jax.device_get(variables['params']), params)
  assert all(jax.tree.leaves(same))


def _events(path):
  import tensorflow as tf
  return list(tf.compat.v1.train.summary_iterator(path))


def test_tensorboard_events_match_the_jsonl_log(runs):
  logs = {m['step']: m for m in _metrics(runs['wd']['A'])}
  files = glob.glob(os.path.join(runs['wd']['A'], 'events.out.tfevents.*'))
  assert len(files) == 1
  events = _events(files[0])
  assert events[0].file_version == 'brain.Event:2'
  seen = {}
  for e in events[1:]:
    for v in e.summary.value:
      seen.setdefault(v.tag, {})[e.step] = v.simple_value
  assert {'loss', 'cls', 'cam', 'seg', 'lr', 'img_per_s', 'seed_coverage'} <= set(seen)
  for tag in ('loss', 'lr', 'seed_coverage', 'img_per_s'):
    assert sorted(seen[tag]) == [1, 2, 3, 4, 5, 6]
    for step, value in seen[tag].items():
      np.testing.assert_allclose(value, logs[step][tag], rtol=1e-6)
  # The resumed run B opened a second file whose START marker drops the killed run's steps > 3.
  starts = [e.step for f in glob.glob(os.path.join(runs['wd']['B'], 'events.out.tfevents.*'))
            for e in _events(f) if e.HasField('session_log')]
  assert starts == [4]
