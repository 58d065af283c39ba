"""One run per workdir: an exclusive lock on `<workdir>/.lock`, taken before any data or compute.

The lock is `fcntl.flock` on the file, so the kernel drops it when its process dies, SIGKILL
included: a dead run never blocks the next one. The file holds the holder's pid, host and start
time, for the message a second run stops with; it is emptied (not removed) on a clean exit, so a
non-empty file found on taking the lock is the record of a run that died, and that is reported.
The file is never unlinked, as a run that opened an unlinked file would hold a lock nobody sees.

Multi-host: only process 0 takes the lock (launch.py, after jax.distributed.initialize, which
touches neither data nor devices). On a shared filesystem a second job's process 0 then stops at
once, and its other processes fail when their coordinator goes away. NFS emulates flock with
POSIX byte-range locks, which also work across hosts.

Whoever holds the lock is the only writer in the workdir, so the temp files it finds there
(io_utils.atomic_path names) are a killed run's leftovers: launch.py deletes them with
io_utils.remove_temp_files once it holds the lock.
"""

import datetime
import errno
import fcntl
import json
import os
import socket

LOCK_NAME = '.lock'


class WorkdirBusyError(RuntimeError):
  """Another live run holds the workdir."""


def _describe(holder):
  return (f'pid {holder.get("pid", "?")} on {holder.get("host", "?")}, started '
          f'{holder.get("started", "?")}')


def _read(fd):
  os.lseek(fd, 0, os.SEEK_SET)
  data = os.read(fd, 4096)
  try:
    return json.loads(data.decode()) if data.strip() else None
  except (ValueError, UnicodeDecodeError):
    return {'pid': '?', 'host': '?', 'started': '?'}  # not ours, or cut short by a crash


class WorkdirLock:
  """`with WorkdirLock(workdir) as lock:`; lock.previous is a dead holder's record, or None."""

  def __init__(self, workdir):
    self.path = os.path.join(workdir, LOCK_NAME)
    self.previous = None
    self._fd = None

  def acquire(self):
    """Takes the lock or raises WorkdirBusyError naming the live holder (never waits)."""
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = _read(fd) or {}
      os.close(fd)
      if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        raise  # e.g. ENOLCK: the filesystem has no locks; say so rather than run unguarded
      raise WorkdirBusyError(
          f'workdir {os.path.dirname(self.path)} is in use by another run ({_describe(holder)});'
          ' wait for it to finish, stop it, or pass another --workdir') from None
    self.previous = _read(fd)
    me = dict(pid=os.getpid(), host=socket.gethostname(),
              started=datetime.datetime.now().isoformat(timespec='seconds'))
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(me) + '\n').encode(), 0)
    os.fsync(fd)
    self._fd = fd
    return self

  def release(self):
    if self._fd is None:
      return
    try:
      os.ftruncate(self._fd, 0)  # empty: this run ended cleanly
    finally:
      os.close(self._fd)  # closing drops the flock
      self._fd = None

  def describe_previous(self):
    """A line about the dead run whose lock was taken over, or None."""
    if self.previous is None:
      return None
    return f'took over the lock of a run that died ({_describe(self.previous)})'

  def __enter__(self):
    return self if self._fd is not None else self.acquire()

  def __exit__(self, *exc):
    self.release()

