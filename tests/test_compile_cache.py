"""The persistent compilation cache: where it goes, and that a second compile is a cache hit."""

import os
import subprocess
import sys

import pytest

from recurseed_jax import compile_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cache_folder(monkeypatch, tmp_path):
  monkeypatch.setenv(compile_cache.ENV, str(tmp_path / 'shared'))
  assert compile_cache.cache_folder('') == str(tmp_path / 'shared')
  assert compile_cache.cache_folder(str(tmp_path / 'mine')) == str(tmp_path / 'mine')
  monkeypatch.delenv(compile_cache.ENV)
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  assert compile_cache.cache_folder('') == str(tmp_path / 'xdg' / 'recurseed_jax' / 'xla')
  monkeypatch.delenv('XDG_CACHE_HOME')
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  assert compile_cache.cache_folder('') == str(tmp_path / 'home' / '.cache' / 'recurseed_jax' /
                                               'xla')
  assert compile_cache.cache_folder('off') is None and compile_cache.cache_folder('OFF') is None
  assert compile_cache.cache_folder('~/x') == str(tmp_path / 'home' / 'x')


_SCRIPT = r"""
import sys, time
import jax, jax.numpy as jnp
from recurseed_jax import compile_cache
compile_cache.enable(sys.argv[1])
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
t = time.time()
f.lower(jnp.ones((64, 64))).compile()
print(time.time() - t)
"""


@pytest.mark.slow
def test_second_process_reads_the_cache(tmp_path):
  """Two fresh processes compile the same program: the first writes an entry, the second finds
  it (the folder does not grow) and compiles no slower."""
  folder = tmp_path / 'cache'
  run = lambda: subprocess.run([sys.executable, '-c', _SCRIPT, str(folder)], cwd=ROOT,
                               capture_output=True, text=True, timeout=300,
                               env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  first = run()
  assert first.returncode == 0, first.stderr[-2000:]
  entries = sorted(os.listdir(folder))
  assert entries, 'nothing was cached'
  second = run()
  assert second.returncode == 0, second.stderr[-2000:]
  assert sorted(os.listdir(folder)) == entries  # a hit: no new entry
