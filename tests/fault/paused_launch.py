"""launch.py with a pause point, for the kill tests (test_fault_kill.py).

    FAULT_PAUSE='*/seeds/train/*.npz:10' FAULT_READY=/tmp/x python tests/fault/paused_launch.py ARGS

runs `python launch.py ARGS`, except that the n-th file whose path matches the glob is held once
its temp file is complete but before it is renamed into place (io_utils.atomic_path), or, for a
checkpoint (path <checkpoints folder>/<step>), once Orbax has committed it: the process writes
FAULT_READY and sleeps until the test kills it. So a kill lands part-way through a stage at a
point the test chooses, rather than wherever a timer happens to fall. Without FAULT_PAUSE this is
launch.py as it is.
"""

import contextlib
import fnmatch
import os
import runpy
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from recurseed_jax import checkpoint
from recurseed_jax import io_utils


def _install(pattern, n, ready):
  """Wraps io_utils.atomic_path (every stage's file writes) and Checkpoints.save with the pause."""
  seen = [0]
  lock = threading.Lock()

  def reached(path, held):
    if not fnmatch.fnmatch(os.fspath(path), pattern):
      return
    with lock:
      seen[0] += 1
      hit = seen[0] == n
    if hit:  # hold here until killed
      with open(ready, 'w') as f:
        f.write(held)
      while True:
        time.sleep(1)

  original_path = io_utils.atomic_path

  @contextlib.contextmanager
  def atomic_path(path):
    with original_path(path) as tmp:
      yield tmp
      reached(path, tmp)  # the temp file is whole and not yet renamed

  original_save = checkpoint.Checkpoints.save

  def save(self, step, tree):
    saved = original_save(self, step, tree)
    path = os.path.join(self.directory, str(step))
    if fnmatch.fnmatch(path, pattern):
      self.wait()  # committed: the rerun can resume from it
      reached(path, '')
    return saved

  io_utils.atomic_path = atomic_path
  checkpoint.Checkpoints.save = save


def main():
  spec = os.environ.get('FAULT_PAUSE')
  if spec:
    pattern, n = spec.rsplit(':', 1)
    _install(pattern, int(n), os.environ['FAULT_READY'])
  sys.argv[0] = os.path.join(ROOT, 'launch.py')
  runpy.run_path(sys.argv[0], run_name='__main__')


if __name__ == '__main__':
  main()
