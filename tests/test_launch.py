"""End-to-end: launch.py on a tiny synthetic config, rerun skipping, and its one-line errors."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--config.data.num_train=32', '--config.data.num_val=8', '--config.data.image_size=32',
        '--config.data.crop_size=32', '--config.train.steps=4', '--config.train.batch_size=4',
        '--config.train.log_every=2', '--config.train.checkpoint_every=2',
        '--config.rs.cam_only_steps=1', '--config.mix.start_step=2', '--config.model.width=8',
        '--config.infer.scales=(1.0,0.5)', '--config.infer.batch_size=8', '--config.crf.workers=0',
        '--config.crf.iterations=2', '--config.export.num_overlays=2']


def _launch(*args, cwd=ROOT):
  # Skipping most XLA optimisation passes keeps this wiring test fast (compiles dominate it).
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', JAX_DISABLE_MOST_OPTIMIZATIONS='true')
  return subprocess.run([sys.executable, os.path.join(ROOT, 'launch.py'), *args], cwd=cwd,
                        env=env, capture_output=True, text=True, timeout=300)


def test_end_to_end_and_rerun_skips(tmp_path):
  wd = str(tmp_path / 'run')
  r = _launch(f'--workdir={wd}', *TINY)
  assert r.returncode == 0, r.stderr[-3000:]
  with open(os.path.join(wd, 'summary.json')) as f:
    summary = json.load(f)
  for key in ('cam_seed_miou', 'rs_seed_miou', 'pseudo_mask_miou', 'val_miou',
              'upper_bound_val_miou'):
    assert 0.0 <= summary[key] <= 1.0, (key, summary[key])
  assert set(summary['seconds']) == {'train', 'seeds', 'crf', 'evaluate', 'export'}
  pngs = [n for n in os.listdir(os.path.join(wd, 'pseudo_masks')) if n.endswith('.png')]
  assert len(pngs) == 32
  assert len(os.listdir(os.path.join(wd, 'overlays'))) == 2
  assert 'RecurSeed seed' in r.stdout
  # A rerun finds every stage done and recomputes nothing.
  mtime = os.path.getmtime(os.path.join(wd, 'seeds', 'train.npz'))
  r2 = _launch(f'--workdir={wd}', *TINY)
  assert r2.returncode == 0, r2.stderr[-3000:]
  for stage in ('train', 'seeds', 'crf', 'evaluate', 'export'):
    assert f'[{stage}] done already, skipping' in r2.stdout
  assert os.path.getmtime(os.path.join(wd, 'seeds', 'train.npz')) == mtime


@pytest.mark.parametrize('args,needle', [
    (['--config.train.no_such_key=1'], 'no_such_key'),
    (['--stages=train,bogus'], "'bogus'"),
    (['--config.mix.kind=cutmix'], 'mix.kind'),
    (['--config.rs.certain=1.5'], 'rs.certain'),
])
def test_bad_input_one_line_error(tmp_path, args, needle):
  r = _launch(f'--workdir={tmp_path / "run"}', *args)
  assert r.returncode != 0
  lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
  assert needle in lines[-1], r.stderr[-2000:]


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('not a folder')
  r = _launch(f'--workdir={blocker / "run"}')
  assert r.returncode != 0
  last = r.stderr.strip().splitlines()[-1]
  assert 'not writable' in last and str(blocker) in last
