"""The processes of a multi-host run: who writes, bounded barriers, shares of work, a watchdog.

Every stage runs on every process (jax.distributed, the same code on every host). Training uses
the global mesh; image loops split the images over processes (`share`), each process writing
its own images' files; process 0 alone writes the workdir's config, markers, summaries and logs
(`is_lead`), after a barrier that every process reaches when its share is done. Barriers and
gathers go through JAX's distributed runtime (its key-value store and barriers, in this one
module, so an API move is one edit) and are bounded by a timeout, so a lost peer ends in an
error rather than a hang. The Watchdog ends a process within `peer_timeout` of a peer's death
with a line naming it (JAX's own runtime would abort later, without saying which).

In a single-process run everything here is a no-op.
"""

import json
import os
import sys
import threading
import time

import jax

_PREFIX = 'recurseed'


def index():
  return jax.process_index()


def count():
  return jax.process_count()


def is_lead():
  """Whether this process writes the workdir's shared files (process 0)."""
  return jax.process_index() == 0


def _client():
  from jax._src import distributed  # the runtime's client: barriers and a key-value store
  client = distributed.global_state.client
  if client is None:
    raise RuntimeError('jax.distributed is not initialised but this run has several processes')
  return client


def share(n):
  """This process's share of n items: every count()-th from its index (a split that does not
  depend on which items are still to do, so a resumed run gives each process the same ones)."""
  return list(range(index(), n, count()))


class PeerError(RuntimeError):
  """Another process did not arrive: it died, hung, or was stopped."""


def barrier(name, timeout_s):
  """Waits until every process reaches `name`; PeerError naming it after timeout_s."""
  if count() == 1:
    return
  try:
    _client().wait_at_barrier(f'{_PREFIX}/{name}', int(timeout_s * 1000))
  except Exception as e:  # the runtime raises its own status errors
    raise PeerError(f'barrier {name!r}: not every one of the {count()} processes arrived within '
                    f'{timeout_s:.0f} s ({e}); a process died or hung: see its log, then rerun '
                    'the same command on every host to resume') from e


def gather(name, value, timeout_s):
  """[value of process 0, 1, ...] of a JSON-able value, on every process."""
  if count() == 1:
    return [value]
  client = _client()
  client.key_value_set(f'{_PREFIX}/{name}/{index()}', json.dumps(value))
  out = []
  for i in range(count()):
    try:
      out.append(json.loads(client.blocking_key_value_get(f'{_PREFIX}/{name}/{i}',
                                                          int(timeout_s * 1000))))
    except Exception as e:
      raise PeerError(f'gather {name!r}: process {i} sent nothing within {timeout_s:.0f} s '
                      f'({e})') from e
  return out


class Watchdog:
  """Each process publishes a heartbeat every `interval` seconds and checks the others'; one
  silent for `peer_timeout` seconds ends this process with a line naming it (exit status 3).

  A context manager; a no-op in a single-process run.
  """

  def __init__(self, peer_timeout=60.0, interval=5.0, exit_fn=os._exit):
    self.peer_timeout = float(peer_timeout)
    self.interval = float(interval)
    self.exit_fn = exit_fn
    self._stop = threading.Event()
    self._thread = None

  def _beat(self, client):
    client.key_value_set(f'{_PREFIX}/alive/{index()}', repr(time.time()), allow_overwrite=True)

  def _check(self, client, started):
    now = time.time()
    for i in range(count()):
      if i == index():
        continue
      try:
        beat = client.key_value_try_get(f'{_PREFIX}/alive/{i}')
      except Exception:  # not published yet: count from our own start
        beat = repr(started)
      if beat == 'done':  # it finished its work and is exiting: not lost
        continue
      last = float(beat)
      if now - last > self.peer_timeout:
        return i, now - last
    return None

  def _run(self):
    client = _client()
    started = time.time()
    while not self._stop.wait(self.interval):
      try:
        self._beat(client)
        lost = self._check(client, started)
      except Exception:  # the runtime itself is gone: JAX's own error handling takes over
        return
      if lost is not None:
        i, silent = lost
        print(f'error: process {i} of {count()} sent no heartbeat for {silent:.0f} s (killed, '
              f'hung or its host lost): process {index()} stops too; rerun the same command on '
              'every host to resume from the last checkpoint and the files written',
              file=sys.stderr, flush=True)
        self.exit_fn(3)
        return

  def collective_failed(self, error):
    """A collective raised (a peer's connection closed): wait for the heartbeats to name the
    lost process (the thread then ends this one), else end with the collective's error."""
    if self._thread is not None:
      self._thread.join(timeout=self.peer_timeout + 2 * self.interval)
    text = ' '.join(str(error).split())[:300]
    print(f'error: a collective between the {count()} processes failed ({text}): another '
          f'process was lost; process {index()} stops too; rerun the same command on every host '
          'to resume', file=sys.stderr, flush=True)
    self.exit_fn(3)

  def __enter__(self):
    if count() > 1:
      self._beat(_client())
      self._thread = threading.Thread(target=self._run, name='peer-watchdog', daemon=True)
      self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=self.interval + 1)
      if exc[0] is None:  # a clean end: the others must not take the silence for a death
        _client().key_value_set(f'{_PREFIX}/alive/{index()}', 'done', allow_overwrite=True)
