"""The multi-host watchdog on a fake key-value store and a fake clock: a peer is lost only after
peer_timeout seconds of this process's own clock without a new heartbeat, whatever the hosts'
wall clocks say; a failed read is no news, a finished peer is never lost.

The real runtime is in test_multihost.py (a SIGKILLed process is named by the other).
"""

from recurseed_jax import processes


class FakeStore:
  """The distributed client's key-value calls, with reads that can be made to fail."""

  def __init__(self):
    self.values = {}
    self.failing = False

  def key_value_set(self, key, value, allow_overwrite=False):
    assert allow_overwrite or key not in self.values
    self.values[key] = value

  def key_value_try_get(self, key):
    if self.failing or key not in self.values:
      raise RuntimeError('NOT_FOUND or UNAVAILABLE')
    return self.values[key]


class Clock:
  def __init__(self):
    self.now = 1000.0

  def __call__(self):
    return self.now


def _watchdog(store, clock, i, n=3, timeout=60.0):
  return processes.Watchdog(timeout, client_fn=lambda: store, clock=clock, process_index=i,
                            process_count=n)


def test_silence_is_counted_on_the_checkers_clock_from_the_last_new_beat():
  store, clock = FakeStore(), Clock()
  lead, peer = _watchdog(store, clock, 0, n=2), _watchdog(store, clock, 1, n=2)
  peer._beat(store)
  assert lead.check(store) is None
  for _ in range(11):  # 55 s of beats every 5 s
    clock.now += 5
    peer._beat(store)
    assert lead.check(store) is None
  clock.now += 59  # silent, under the timeout
  assert lead.check(store) is None
  clock.now += 2
  i, silent = lead.check(store)
  assert i == 1 and 60 < silent < 62


def test_a_stepped_or_skewed_wall_clock_is_not_a_death(monkeypatch):
  """The beats carry no time: the wall clock stepping an hour (NTP, a resumed VM) between two
  beats, or another host's clock being an hour off, is no silence."""
  store, clock = FakeStore(), Clock()
  lead, peer = _watchdog(store, clock, 0, n=2), _watchdog(store, clock, 1, n=2)
  wall = [1.7e9]
  monkeypatch.setattr(processes.time, 'time', lambda: wall[0])
  for k in range(40):
    clock.now += 5
    wall[0] += 5 + (3600 if k == 20 else 0)
    peer._beat(store)
    assert lead.check(store) is None


def test_a_peer_that_never_beat_counts_from_the_start_and_failed_reads_are_no_news():
  store, clock = FakeStore(), Clock()
  dog = _watchdog(store, clock, 0)
  clock.now += 50
  assert dog.check(store) is None
  store.values['recurseed/alive/1'] = '1'
  store.values['recurseed/alive/2'] = '1'
  assert dog.check(store) is None  # both seen now
  store.failing = True  # an RPC fails for 40 s: no news, the silence goes on counting
  clock.now += 40
  assert dog.check(store) is None
  store.failing = False
  store.values['recurseed/alive/1'] = '2'
  clock.now += 25  # process 2 has not beaten for 65 s; process 1 just did
  assert dog.check(store)[0] == 2


def test_a_finished_peer_is_never_lost_and_a_failed_beat_does_not_stop_the_watchdog():
  store, clock = FakeStore(), Clock()
  dog = _watchdog(store, clock, 1, n=2)
  store.values['recurseed/alive/0'] = 'done'
  clock.now += 3600
  assert dog.check(store) is None

  exits = []
  beats = []

  class Flaky(FakeStore):
    def key_value_set(self, key, value, allow_overwrite=False):
      beats.append(value)
      if len(beats) == 2:
        raise RuntimeError('DEADLINE_EXCEEDED')  # one slow RPC on a loaded host
      super().key_value_set(key, value, allow_overwrite)
      if len(beats) == 4:
        dog._stop.set()

  flaky = Flaky()
  flaky.values['recurseed/alive/0'] = 'done'
  dog = processes.Watchdog(60.0, interval=0.001, exit_fn=exits.append, client_fn=lambda: flaky,
                           process_index=1, process_count=2)
  dog._run()
  assert beats == ['1', '2', '3', '4'] and flaky.values['recurseed/alive/1'] == '4'
  assert not exits
