"""Kill anywhere, lose nothing: SIGKILL inside each stage, rerun the same command, same outputs.

The uninterrupted reference run is the session's every_stage_run (conftest.py: the tiny
multi-stage pipeline of test_launch.MULTI, the random walk included); one chained run in another
workdir that is SIGKILLed once inside each stage of KILLS in turn (each time rerunning the same
command), then rerun to the end. The two workdirs must then hold the same files: the same final
checkpoint (step and arrays) and metrics of every training run, byte-identical PNGs, the same
seeds, evaluation table and mIoUs, and no temp or partial file. On the way: a second launch on
the held workdir stops at once naming the holder's pid, and each rerun takes over the dead run's
lock and removes its temp file.

All launches share the session's persistent compilation cache, so they compile almost nothing.
"""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from recurseed_jax import checkpoint as ckpt_lib
from recurseed_jax import io_utils
from recurseed_jax import stages
import test_launch

pytestmark = pytest.mark.slow

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
ARGS = test_launch.MULTI  # every stage, as the reference ran
TRAIN_RUNS = ('train', 'cam_baseline', 'upper_bound', 'boundary', 'segmenter')  # to compare
TIMING_KEYS = ('img_per_s', 'seconds')


@dataclasses.dataclass(frozen=True)
class Kill:
  """Where the chained run is killed: part-way through `stage`.

  pause: 'glob:n', the n-th file matching the glob is held after its temp file is written and
    before the rename, or the n-th checkpoint once committed (paused_launch.py); ready: a workdir
    path whose appearance says the stage is part-way, killed there while the run goes on (as a
    kill can fall anywhere, in an Orbax write too).
  """
  stage: str
  pause: str = ''
  ready: str = ''


# In pipeline order, except that crf comes before seeds: the two run overlapped, and a CRF held in
# the main thread leaves most seeds undone, while a seed write held on a writer thread lets the CRF
# finish meanwhile. A new stage is one line (and its outputs are compared with no more code).
# The RecurSeed runs are killed on the fly: two more runs follow the first one's checkpoint 2.
KILLS = (
    Kill('train_rs', ready='train/checkpoints/2'),
    Kill('crf', pause='*/pseudo_masks/*.png:3'),
    Kill('seeds', pause='*/seeds/train/*.npz:5'),
    Kill('train_seg', pause='*/segmenter/checkpoints/2:1'),
    Kill('predict', pause='*/predictions/seg_val/*.png:3'),
    Kill('export', pause='*/overlays/*.png:1'),
)


def _paused_command(workdir):
  return [sys.executable, os.path.join(HERE, 'paused_launch.py'), f'--workdir={workdir}', *ARGS]


def _complete(workdir):
  r = test_launch.launch(f'--workdir={workdir}', *ARGS)
  assert r.returncode == 0, r.stderr[-3000:]
  return r


def _kill_inside(kill, workdir, env, ready_file, log, second=False):
  """Runs the command until `kill` says the stage is part-way, then SIGKILLs it; returns a record.

  With `second`, a plain launch.py on the same workdir runs meanwhile (while the first is held).
  """
  env = dict(env)
  if kill.pause:
    env.update(FAULT_PAUSE=kill.pause, FAULT_READY=ready_file)
  with open(log, 'w') as out:
    proc = subprocess.Popen(_paused_command(workdir), env=env, cwd=ROOT, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)
  record = dict(stage=kill.stage, pid=proc.pid)
  try:
    deadline = time.time() + 240
    ready = ready_file if kill.pause else os.path.join(workdir, kill.ready)
    while not os.path.exists(ready) and proc.poll() is None and time.time() < deadline:
      time.sleep(0.05)
    if proc.poll() is not None or not os.path.exists(ready):
      with open(log) as f:
        pytest.fail(f'the run ended or stalled before it got part-way through {kill.stage}:\n'
                    + f.read()[-3000:])
    if kill.pause:
      with open(ready_file) as f:
        record['temp'] = f.read()
      os.remove(ready_file)
    if second:  # one run per workdir: a second launch stops at once
      record['second'] = test_launch.launch(f'--workdir={workdir}', *ARGS, timeout=120)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
  record['returncode'] = proc.returncode
  record['marker'] = os.path.exists(os.path.join(workdir, 'stages', f'{kill.stage}.json'))
  record['temp_left'] = bool(record.get('temp')) and os.path.exists(record['temp'])
  return record


@pytest.fixture(scope='module')
def chain(every_stage_run, tmp_path_factory):
  root = tmp_path_factory.mktemp('kill')
  env = dict(os.environ, **test_launch.ENV)
  wd = str(root / 'chained')
  first_held = next(k for k in KILLS if k.pause)
  kills = [_kill_inside(k, wd, env, str(root / 'ready'), str(root / f'{k.stage}.log'),
                        second=k is first_held)
           for k in KILLS]
  final = _complete(wd)
  return dict(ref=every_stage_run['workdir'], wd=wd, kills=kills, final=final, logs=root)


def test_each_kill_landed_part_way_through_its_stage(chain):
  assert all(k.stage in stages.STAGES for k in KILLS)
  for kill, record in zip(KILLS, chain['kills']):
    assert record['returncode'] == -signal.SIGKILL, record
    assert not record['marker'], f'{kill.stage} had finished before the kill'
    if record.get('temp'):  # killed holding a whole temp file that was never renamed
      assert record['temp_left'] and io_utils.is_temp_name(os.path.basename(record['temp']))


def test_second_launch_on_a_held_workdir_stops_naming_the_holder(chain):
  for record in [r for r in chain['kills'] if 'second' in r]:
    second = record['second']
    assert second.returncode == 2, second.stderr[-2000:]
    last = second.stderr.strip().splitlines()[-1]
    assert f'pid {record["pid"]} ' in last and 'in use by another run' in last, last


def test_rerun_takes_over_a_dead_runs_lock_and_removes_its_temps(chain):
  pids = [r['pid'] for r in chain['kills']]
  reruns = []
  for kill in KILLS[1:]:
    with open(os.path.join(chain['logs'], f'{kill.stage}.log')) as f:
      reruns.append(f.read())
  reruns.append(chain['final'].stderr)
  for pid, text, record in zip(pids, reruns, chain['kills']):
    assert f'took over the lock of a run that died (pid {pid} ' in text
    if record.get('temp'):
      assert 'temp file(s) left by a killed run' in text


def _files(workdir):
  """{relative path: absolute path} of a workdir's files, less logs that record each process."""
  out = {}
  for folder, dirs, files in os.walk(workdir):
    rel = os.path.relpath(folder, workdir)
    if os.path.basename(folder) == 'checkpoints':
      dirs[:] = []  # compared by restoring them
      out.update({os.path.join(rel, d): None for d in os.listdir(folder)})
      continue
    for name in files:
      if not name.startswith('events.out.tfevents.') and name != '.lock':
        out[os.path.normpath(os.path.join(rel, name))] = os.path.join(folder, name)
  return out


def test_no_temp_or_partial_file_is_left(chain):
  for folder, dirs, files in os.walk(chain['wd']):
    for name in dirs + files:
      assert not io_utils.is_temp_name(name) and 'orbax-checkpoint-tmp' not in name, (
          os.path.join(folder, name))
  assert sorted(_files(chain['wd'])) == sorted(_files(chain['ref']))


def _metrics(path):
  with open(path) as f:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in f]


def _report(path):
  """report.html less what names the run: its workdir, the time it was built, stage seconds."""
  workdir = os.path.dirname(path)
  with open(path) as f:
    text = f.read().replace(workdir, 'WORKDIR').replace(os.path.basename(workdir), 'NAME')
  text = re.sub(r'\d{4}-\d\d-\d\d \d\d:\d\d', 'TIME', text)
  return re.sub(r'<details><summary>seconds per stage</summary>.*?</details>', '', text,
                flags=re.S)


def test_outputs_equal_an_uninterrupted_run(chain):
  ref, got = _files(chain['ref']), _files(chain['wd'])
  compared = set()
  for rel, path in ref.items():
    if path is None:
      continue
    other, name = got[rel], os.path.basename(rel)
    if name == 'metrics.jsonl':
      assert _metrics(path) == _metrics(other), rel
    elif name.endswith('.npz'):  # zip entries carry a time stamp: compare the arrays
      a, b = io_utils.load_npz(path), io_utils.load_npz(other)
      assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), rel
    elif name == 'summary.json':  # + seconds and devices
      with open(path) as f, open(other) as g:
        a, b = json.load(f), json.load(g)
      assert {k: v for k, v in a.items() if k.endswith('_miou')} == {
          k: v for k, v in b.items() if k.endswith('_miou')}
    elif os.path.dirname(rel) == 'stages':
      continue  # seconds per stage
    elif rel == 'report.html':
      assert _report(path) == _report(other), rel
    else:  # PNGs, evaluation.md, config.json, the synthetic set's meta.json
      with open(path, 'rb') as f, open(other, 'rb') as g:
        assert f.read() == g.read(), rel
    compared.add(os.path.splitext(name)[1])
  assert {'.png', '.npz', '.md', '.jsonl'} <= compared
  runs = sorted({os.path.dirname(rel) for rel, path in ref.items() if path is None})
  assert {os.path.join(r, 'checkpoints') for r in TRAIN_RUNS} <= set(runs)
  for run in runs:  # every training run's last checkpoint: same step, same arrays
    trees = []
    for workdir in (chain['ref'], chain['wd']):
      with ckpt_lib.Checkpoints(os.path.join(workdir, run)) as ckpts:
        trees.append((ckpts.latest_step(), _flatten(ckpts.restore(None))))
    (step_a, tree_a), (step_b, tree_b) = trees
    assert step_a == step_b and tree_a.keys() == tree_b.keys(), run
    for key in tree_a:
      np.testing.assert_array_equal(tree_a[key], tree_b[key], err_msg=f'{run} {key}')


def _flatten(tree):
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
