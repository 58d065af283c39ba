"""A full disk while the pipeline writes (ENOSPC, on a small tmpfs): the run stops with one line
naming the file, leaves no half file, and the same command resumes once there is space.

Needs a tmpfs mount (root in a container that allows it); skipped elsewhere.
"""

import os
import subprocess

import pytest

from recurseed_jax import stages
import test_launch

pytestmark = pytest.mark.slow


def _mount(folder, size):
  os.makedirs(folder, exist_ok=True)
  r = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(folder)],
                     capture_output=True, text=True)
  if r.returncode:
    pytest.skip(f'cannot mount a tmpfs here ({r.stderr.strip()})')


def _umount(folder):
  subprocess.run(['umount', str(folder)], check=False)


# The seeds and CRF stages on the session's every_stage_run networks (conftest.py).
ARGS = [*test_launch.MULTI, '--stages=train_rs,seeds,crf']  # --stages wins over config.stages


def test_full_disk_while_writing_pseudo_masks(every_stage_run, tmp_path):
  wd = tmp_path / 'run'
  ctx = stages.Context(config=None, workdir=str(wd), data=None, class_names=())
  stages.link_stages(every_stage_run['workdir'], ctx, ['train_rs'])
  small = tmp_path / 'small'
  _mount(small, '12k')  # room for a few of the 32 pseudo masks only
  try:
    os.symlink(small, wd / 'pseudo_masks')
    r = test_launch.launch(f'--workdir={wd}', *ARGS)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2, r.stderr[-3000:]
    assert 'No space left on device' in last and str(wd / 'pseudo_masks') in last, last
    assert 'Traceback' not in r.stderr
    names = os.listdir(small)
    assert names and not [n for n in names if '.tmp' in n]  # whole files only
    written = len(names)
  finally:
    _umount(small)
  # Space again (a fresh, larger tmpfs: the first one's masks went with it): the same command
  # keeps the seeds it wrote, makes every missing mask and finishes.
  _mount(small, '1m')
  try:
    r = test_launch.launch(f'--workdir={wd}', *ARGS)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len([n for n in os.listdir(small) if n.endswith('.png')]) == 32 >= written
  finally:
    _umount(small)
