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

  A heartbeat is a counter, and silence is measured on this process's own monotonic clock from
  the last time it saw a peer's counter change: hosts' wall clocks may differ by more than the
  timeout, and a wall clock may step (NTP, a paused VM), neither of which is a death. A failed
  beat or read (a slow RPC on a loaded host) is retried at the next interval; only the silence
  counts. A context manager; a no-op in a single-process run.
  """

  def __init__(self, peer_timeout=60.0, interval=5.0, exit_fn=os._exit, client_fn=None,
               clock=time.monotonic, process_index=None, process_count=None):
    self.peer_timeout = float(peer_timeout)
    self.interval = float(interval)
    self.exit_fn = exit_fn
    self._client_fn = client_fn or _client
    self._clock = clock
    self._index, self._count = process_index, process_count  # None: jax's, on entering
    self._beats = 0
    self._seen = {}  # peer -> (its last counter value read, when it last changed: our clock)
    self._started = clock()  # a peer never heard from is silent since then (reset on entering)
    self._stop = threading.Event()
    self._thread = None

  def _key(self, i):
    return f'{_PREFIX}/alive/{i}'

  def _beat(self, client):
    self._beats += 1
    client.key_value_set(self._key(self._index), str(self._beats), allow_overwrite=True)

  def check(self, client):
    """(peer, seconds silent) of the first peer silent for longer than peer_timeout, or None."""
    now = self._clock()
    for i in range(self._count):
      if i == self._index:
        continue
      try:
        beat = client.key_value_try_get(self._key(i))
      except Exception:  # not published yet, or the read failed: no news of it
        beat = None
      if beat == 'done':  # it finished its work and is exiting: not lost
        continue
      last, since = self._seen.get(i, (None, self._started))
      if beat is not None and beat != last:
        self._seen[i] = (beat, now)
        continue
      if now - since > self.peer_timeout:
        return i, now - since
    return None

  def _run(self):
    client = self._client_fn()
    while not self._stop.wait(self.interval):
      try:
        self._beat(client)
      except Exception:  # retried next time; a runtime that is gone ends the run by itself
        pass
      lost = self.check(client)
      if lost is not None:
        i, silent = lost
        print(f'error: process {i} of {self._count} sent no heartbeat for {silent:.0f} s '
              f'(killed, hung or its host lost): process {self._index} stops too; rerun the '
              'same command on every host to resume from the last checkpoint and the files '
              'written', file=sys.stderr, flush=True)
        self.exit_fn(3)
        return

  def collective_failed(self, error):
    """A collective raised (a peer's connection closed): wait for the heartbeats to name the
    lost process (the thread then ends this one), else end with the collective's error."""
    if self._thread is not None:
      self._thread.join(timeout=self.peer_timeout + 2 * self.interval)
    text = ' '.join(str(error).split())[:300]
    print(f'error: a collective between the {self._count} processes failed ({text}): another '
          f'process was lost; process {self._index} stops too; rerun the same command on every '
          'host to resume', file=sys.stderr, flush=True)
    self.exit_fn(3)

  def __enter__(self):
    self._index = index() if self._index is None else self._index
    self._count = count() if self._count is None else self._count
    self._started = self._clock()
    if self._count > 1:
      self._beat(self._client_fn())
      self._thread = threading.Thread(target=self._run, name='peer-watchdog', daemon=True)
      self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=self.interval + 1)
      if exc[0] is None:  # a clean end: the others must not take the silence for a death
        self._client_fn().key_value_set(self._key(self._index), 'done', allow_overwrite=True)
