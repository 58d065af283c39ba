"""A full disk while the pipeline writes (ENOSPC, on a small tmpfs): the run stops with one line
naming the file, leaves no half file, and the same command resumes once there is space.

Needs a tmpfs mount (root in a container that allows it); skipped elsewhere.
"""

import os
import subprocess
import sys

import pytest

from test_launch import TINY

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _mount(folder, size):
  os.makedirs(folder, exist_ok=True)
  r = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(folder)],
                     capture_output=True, text=True)
  if r.returncode:
    pytest.skip(f'cannot mount a tmpfs here ({r.stderr.strip()})')


def _umount(folder):
  subprocess.run(['umount', str(folder)], check=False)


def _launch(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', JAX_DISABLE_MOST_OPTIMIZATIONS='true')
  return subprocess.run([sys.executable, os.path.join(ROOT, 'launch.py'), *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=600)


def test_full_disk_while_writing_pseudo_masks(tmp_path):
  wd = tmp_path / 'run'
  r = _launch(f'--workdir={wd}', *TINY, '--stages=train_rs')
  assert r.returncode == 0, r.stderr[-3000:]
  small = tmp_path / 'small'
  _mount(small, '12k')  # room for a few of the 32 pseudo masks only
  try:
    os.symlink(small, wd / 'pseudo_masks')
    r = _launch(f'--workdir={wd}', *TINY, '--stages=train_rs,seeds,crf')
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
    r = _launch(f'--workdir={wd}', *TINY, '--stages=train_rs,seeds,crf')
    assert r.returncode == 0, r.stderr[-3000:]
    assert len([n for n in os.listdir(small) if n.endswith('.png')]) == 32 >= written
  finally:
    _umount(small)
