"""Fixtures shared by the test modules (tests/ and tests/fault/ are on sys.path: pyproject.toml).

- fast_compiles: XLA's optimisations off while a module runs; a module opts in with
  `pytestmark = pytest.mark.usefixtures('fast_compiles')` (compiling train steps is most of its
  cost, and unoptimised programs give the same numbers to float precision).
- one_torch_thread: torch on one thread while a module runs (on a busy 2-core machine torch's
  spinning workers slow it down 10-20x); opted into the same way.
"""

import jax
import pytest


@pytest.fixture(scope='module')
def fast_compiles():
  old = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', old)


@pytest.fixture(scope='module')
def one_torch_thread():
  torch = pytest.importorskip('torch')
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)
