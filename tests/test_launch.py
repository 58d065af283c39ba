"""End-to-end: launch.py on a tiny synthetic config, resuming, rerun skipping, one-line errors."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from recurseed_jax import stages
from recurseed_jax.stages import products
import report_fixtures as rf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--config.data.num_train=32', '--config.data.num_val=8', '--config.data.image_size=32',
        '--config.data.crop_size=32', '--config.train.steps=4', '--config.train.batch_size=4',
        '--config.train.log_every=2', '--config.train.checkpoint_every=2',
        '--config.rs.cam_only_steps=1', '--config.mix.start_step=2', '--config.model.width=8',
        '--config.infer.scales=(1.0,0.5)', '--config.infer.batch_size=8', '--config.crf.workers=0',
        '--config.crf.iterations=2', '--config.export.num_overlays=2',
        '--config.boundary.train.steps=4', '--config.boundary.train.batch_size=4',
        '--config.boundary.train.checkpoint_every=2', '--config.boundary.train.log_every=2',
        '--config.boundary.data.crop_size=32', '--config.boundary.radius=3']
# The whole paper (configs/synthetic_multistage.py) with both kinds of pseudo masks (DenseCRF and
# the random walk, the segmenter trained on the walk's + CRF), the baseline twin on as in the demo.
MULTI = [f'--config={os.path.join(ROOT, "configs", "synthetic_multistage.py")}', *TINY,
         '--config.train.cam_baseline=True', '--config.seg.train.steps=4',
         '--config.seg.train.checkpoint_every=2', '--config.seg.train.batch_size=4',
         '--config.seg.train.log_every=2', '--config.seg.data.crop_size=32',
         f'--config.stages={",".join(stages.STAGES)}', '--config.pseudo.method=random_walk+crf',
         '--config.export.mask_dirs=pseudo_masks,predictions/val']
# Every test launch: TF quiet, and XLA's optimisation passes and new CPU fusion emitters off
# (compiles dominate these wiring tests; unoptimised programs give the same numbers).
ENV = dict(TF_CPP_MIN_LOG_LEVEL='2', JAX_DISABLE_MOST_OPTIMIZATIONS='true',
           XLA_FLAGS='--xla_cpu_use_fusion_emitters=false')


def launch(*args, timeout=300, **env):
  """`python launch.py ARGS` in ROOT, with ENV and `env` on the environment; output captured."""
  return subprocess.run([sys.executable, os.path.join(ROOT, 'launch.py'), *args], cwd=ROOT,
                        capture_output=True,
                        text=True, timeout=timeout, env=dict(os.environ, **{**ENV, **env}))


def _pngs(folder):
  return sorted(n for n in os.listdir(folder) if n.endswith('.png'))


@pytest.mark.slow
def test_end_to_end_multistage_resume_and_rerun_skips(every_stage_run, tmp_path):
  stdout = every_stage_run['stdout']  # of launch.py --workdir=... *MULTI (conftest.py)
  wd = str(tmp_path / 'run')  # a copy: the reruns below change it
  shutil.copytree(every_stage_run['workdir'], wd, symlinks=True)
  assert '[seeds+crf] running' in stdout
  with open(os.path.join(wd, 'summary.json')) as f:
    summary = json.load(f)
  for key in ('cam_seed_miou', 'rs_cam_seed_miou', 'rs_seed_miou', 'pseudo_mask_miou',
              'pseudo_mask_rw_miou', 'pseudo_mask_rw_crf_miou', 'val_miou',
              'multistage_val_nocrf_miou', 'multistage_val_miou', 'upper_bound_val_miou'):
    assert 0.0 <= summary[key] <= 1.0, (key, summary[key])
  overlapped = {'seeds', 'crf'}  # one wall time, one entry
  assert set(summary['seconds']) == set(stages.STAGES) - overlapped | {'seeds+crf'}
  assert summary['seconds_total'] == pytest.approx(sum(summary['seconds'].values()), abs=0.05)
  assert summary['machine']['cores'] >= 1 and summary['machine']['backend'] == 'cpu'
  assert f"on {summary['machine']['cpu']} (" in stdout  # the table says where it was measured
  for run in ('segmenter', 'boundary'):
    assert os.path.isdir(os.path.join(wd, run, 'checkpoints', '4'))
  for folder in ('ir_labels', 'pseudo_masks_rw', 'pseudo_masks_rw_crf'):
    assert len(_pngs(os.path.join(wd, folder))) == 32, folder
  seeds = os.path.join(wd, 'seeds', 'train')
  masks = os.path.join(wd, 'pseudo_masks')
  assert len(os.listdir(seeds)) == 32 and len(_pngs(masks)) == 32
  for folder in ('val', 'val_upper_bound', 'seg_val', 'seg_val_nocrf'):
    assert len(_pngs(os.path.join(wd, 'predictions', folder))) == 8
  with np.load(os.path.join(seeds, 'train_00000.npz'), allow_pickle=False) as z:
    k = len(z['classes'])
    assert {n: z[n].shape for n in z.files} == {
        'classes': (k,), 'rs': (32, 32, k), 'rs_cam': (32, 32, k), 'cam': (32, 32, k)}
  with open(os.path.join(wd, 'evaluation.md')) as f:
    assert '| RecurSeed seed (train) |' in f.read()
  assert len(os.listdir(os.path.join(wd, 'overlays'))) == 2
  with open(os.path.join(wd, 'report.html'), encoding='utf-8') as f:
    rows = rf.Page(f.read()).summary_rows()  # every product, as summary.json has it
  assert {title: row[1] for title, row in rows.items()} == {
      products.TABLE_TITLES[k[:-5]]: f'{100 * v:.1f}' for k, v in summary.items()
      if k.endswith('_miou')}
  assert 'RecurSeed seed' in stdout and 'VOC submission skipped' in stdout

  # A killed seeds+crf run: two seeds (with their masks) and one more mask missing. The rerun
  # redoes exactly those and leaves every other file alone.
  for name in ('seeds', 'crf'):
    os.remove(os.path.join(wd, 'stages', f'{name}.json'))
  for i in (3, 17):
    os.remove(os.path.join(seeds, f'train_{i:05d}.npz'))
    os.remove(os.path.join(masks, f'train_{i:05d}.png'))
  os.remove(os.path.join(masks, 'train_00020.png'))
  before = {p: os.path.getmtime(p) for d in (seeds, masks)
            for p in (os.path.join(d, n) for n in os.listdir(d))}
  r2 = launch(f'--workdir={wd}', *MULTI)
  assert r2.returncode == 0, r2.stderr[-3000:]
  for stage in ('train_rs', 'ir_labels', 'train_boundary', 'random_walk', 'train_seg', 'predict',
                'evaluate', 'export'):
    assert f'[{stage}] done already, skipping' in r2.stdout
  assert len(os.listdir(seeds)) == 32 and len(_pngs(masks)) == 32
  assert all(os.path.getmtime(p) == t for p, t in before.items())

  # Everything done: a rerun recomputes nothing.
  r3 = launch(f'--workdir={wd}', *MULTI)
  assert r3.returncode == 0, r3.stderr[-3000:]
  for stage in stages.STAGES:
    assert f'[{stage}] done already, skipping' in r3.stdout


# Each case is a launch (3-4 s of imports): two in the fast subset, the rest in the full suite
# (test_validate.py checks every rule in process).
_LATER = dict(marks=pytest.mark.slow)


@pytest.mark.parametrize('args,needle', [
    pytest.param(['--config.train.no_such_key=1'], 'no_such_key', **_LATER),
    (['--config.train.stpes=5'], "config.train has no field 'stpes'; did you mean 'steps'?"),
    pytest.param(['--config.train.steps=many'], '--config.train.steps=many', **_LATER),
    (['--stages=train,bogus'], "'bogus'"),
    pytest.param(['--config.mix.kind=cutmix'], 'mix.kind', **_LATER),
    pytest.param(['--config.rs.certain=1.5'], 'rs.certain', **_LATER),
    pytest.param(['--config.infer.buckets=((32,0),)'], 'infer.buckets', **_LATER),
])
def test_bad_input_one_line_error(tmp_path, args, needle):
  r = launch(f'--workdir={tmp_path / "run"}', *args)
  assert r.returncode == 2, r.stderr[-2000:]
  lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
  assert needle in lines[-1], r.stderr[-2000:]
  assert lines[-1].startswith('error: ') and 'Traceback' not in r.stderr, r.stderr[-2000:]


@pytest.mark.slow
def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('not a folder')
  r = launch(f'--workdir={blocker / "run"}')
  assert r.returncode != 0
  last = r.stderr.strip().splitlines()[-1]
  assert 'not writable' in last and str(blocker) in last
