"""One run per workdir (recurseed_jax/workdir_lock.py): a live holder stops a second run, naming its
pid; a dead holder's lock is taken over; temp files of a killed run are swept.

launch.py end to end (a second launch on a held workdir, the takeover message on rerun):
tests/fault/test_fault_kill.py.
"""

import os
import signal
import subprocess
import sys

import pytest

from recurseed_jax import io_utils
from recurseed_jax import workdir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOLD = """
import sys, time
sys.path.insert(0, sys.argv[1])
from recurseed_jax import workdir_lock
workdir_lock.WorkdirLock(sys.argv[2]).acquire()
print('held', flush=True)
time.sleep(120)
"""


def test_live_holder_blocks_and_a_dead_ones_lock_is_taken_over(tmp_path):
  workdir = str(tmp_path)
  holder = subprocess.Popen([sys.executable, '-c', HOLD, ROOT, workdir], stdout=subprocess.PIPE,
                            text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(workdir_lock.WorkdirBusyError) as info:
      workdir_lock.WorkdirLock(workdir).acquire()
    msg = str(info.value)
    assert f'pid {holder.pid} ' in msg and workdir in msg and '--workdir' in msg
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  with workdir_lock.WorkdirLock(workdir) as lock:  # the kernel dropped the dead run's flock
    assert f'died (pid {holder.pid} ' in lock.describe_previous()
    with pytest.raises(workdir_lock.WorkdirBusyError, match=f'pid {os.getpid()} '):
      workdir_lock.WorkdirLock(workdir).acquire()  # held by this process now
  with workdir_lock.WorkdirLock(workdir) as lock:  # released cleanly: nothing to report
    assert lock.previous is None and lock.describe_previous() is None
  assert os.path.getsize(os.path.join(workdir, workdir_lock.LOCK_NAME)) == 0


def test_remove_stale_temps_takes_only_temp_files(tmp_path):
  keep = [tmp_path / 'seeds' / 'a.npz', tmp_path / 'pseudo_masks' / 'a.png', tmp_path / '.hidden']
  temps = [io_utils.temp_path_for(str(tmp_path / 'seeds' / 'b.npz')),
           io_utils.temp_path_for(str(tmp_path / 'summary.json'))]
  for path in keep + temps:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, 'w').close()
  assert sorted(io_utils.remove_temp_files(str(tmp_path))) == sorted(temps)
  assert all(os.path.exists(p) for p in keep) and not any(os.path.exists(p) for p in temps)
