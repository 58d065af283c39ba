"""Fixtures shared by the test modules (tests/ and tests/fault/ are on sys.path: pyproject.toml).

- session_compilation_cache (every test): one persistent compilation cache for the session, in
  a session temp folder unless $RECURSEED_COMPILATION_CACHE names one (then it is kept, and a
  rerun of the suite compiles almost nothing). Every launch.py subprocess and this process use
  it, so a program one test compiled loads in the next, and nothing lands in the user's cache.
- every_stage_run: launch.py through every stage on test_launch.MULTI, uninterrupted, once per
  session (one pytest-xdist worker makes it, the others wait for it): the end-to-end test checks
  it, the kill test compares its killed and resumed run with it, the full-disk test starts from
  its trained networks. Read it only; copy to change it.
- fast_compiles (every test): XLA's optimisations off in this process, as in the launches
  (compiling is most of an in-process test's cost, and unoptimised programs give the same
  numbers to float precision); a test of the optimised program itself asks for
  `optimized_compiles`. XLA_FLAGS, which XLA reads once when a test first touches a device,
  gets the launches' flags at import (XLA's older CPU fusion emitters).
- one_torch_thread: torch on one thread while a module runs (on a busy 2-core machine torch's
  spinning workers slow it down 10-20x); a module opts in with
  `pytestmark = pytest.mark.usefixtures('one_torch_thread')`.
"""

import fcntl
import os

import jax
import pytest

from recurseed_jax import compile_cache
import test_launch

# The launches' XLA flags in this process too, and so in every subprocess it starts: the older
# CPU fusion emitters compile the tests' unoptimised programs in 2/3 of the time (test_train.py's
# three mixed-step tests: 31 s -> 21 s on 2 cores, 2026-12-04). Set before any test initialises
# XLA's CPU backend, which reads XLA_FLAGS once.
_flags = os.environ.get('XLA_FLAGS', '')
if test_launch.ENV['XLA_FLAGS'] not in _flags:
  os.environ['XLA_FLAGS'] = f"{_flags} {test_launch.ENV['XLA_FLAGS']}".strip()

# The longest modules first (measured, 2 cores), the rest in their order: with the README's
# `-n 2 --dist loadscope --no-loadscope-reorder` two pytest-xdist workers take whole modules in
# this order, so that they end together instead of one waiting on the last multi-host test.
LONGEST_FIRST = ('test_multihost.py', 'test_fault_kill.py', 'test_launch.py', 'test_resume.py',
                 'test_fault_enospc.py', 'test_parallel.py', 'test_infer_dtype.py', 'test_infer.py',
                 'test_train.py', 'test_multistage.py', 'test_walk.py',
                 'test_fidelity_inference.py')


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable


def _session_folder(tmp_path_factory, name):
  """A folder of this session that every pytest-xdist worker shares (each has a temp folder of
  its own below the session's), or this process's when there are no workers."""
  base = tmp_path_factory.getbasetemp()
  root = base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base
  folder = root / name
  folder.mkdir(exist_ok=True)
  return folder


def _once(folder, make):
  """make(folder) once per session: the first worker to ask runs it holding a lock on the folder,
  the others wait for it and then find its done file. A make that fails leaves no done file, so
  the next one to ask tries again (and fails with its own message)."""
  done = folder / 'done'
  with open(folder / 'lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not done.exists():
      make(folder)
      done.write_text('')


@pytest.fixture(scope='session', autouse=True)
def session_compilation_cache(tmp_path_factory):
  folder = os.environ.get(compile_cache.ENV) or str(_session_folder(tmp_path_factory, 'xla_cache'))
  os.environ[compile_cache.ENV] = folder  # subprocesses inherit it
  # This process too, every program kept: with a kept folder a rerun of the fast subset loads
  # its ~560 programs instead of compiling them (1 min 25 s against 2 min 05 s on 2 cores).
  compile_cache.enable(folder)
  return folder


@pytest.fixture(scope='session')
def every_stage_run(tmp_path_factory):
  folder = _session_folder(tmp_path_factory, 'every_stage')
  workdir = folder / 'reference'

  def make(folder):
    result = test_launch.launch(f'--workdir={workdir}', *test_launch.MULTI)
    assert result.returncode == 0, result.stderr[-3000:]
    (folder / 'stdout.txt').write_text(result.stdout)

  _once(folder, make)
  return dict(workdir=str(workdir), stdout=(folder / 'stdout.txt').read_text())


@pytest.fixture(scope='session', autouse=True)
def fast_compiles():
  """XLA's optimisations off in the test process, as in its launches (test_launch.ENV): compiles
  are most of an in-process test's time, and unoptimised programs compute the same numbers to
  float precision (measured: 8 modules, 104 tests, 373 s -> 281 s, all passing either way)."""
  jax.config.update('jax_disable_most_optimizations', True)


@pytest.fixture
def optimized_compiles():
  """XLA's optimisations on for one test: what it checks is the optimised program (a memory
  plan)."""
  old = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', False)
  yield
  jax.config.update('jax_disable_most_optimizations', old)


@pytest.fixture(scope='module')
def one_torch_thread():
  torch = pytest.importorskip('torch')
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)
