"""JAX's persistent compilation cache: a rerun or resume of the same config compiles nothing.

config.compilation_cache: '' (the default) puts it in $RECURSEED_COMPILATION_CACHE when that is
set (a cluster's shared folder; the test suite's session folder), else the per-user cache folder,
$XDG_CACHE_HOME/recurseed_jax/xla or ~/.cache/recurseed_jax/xla; 'off' disables it; anything
else is the folder. Every compiled program is kept (no minimum compile time or size): the
seeds step and the training step take tens of seconds to a few minutes each to compile, and a
cached one loads in about a second. Entries are keyed by the program, the devices and the XLA
flags, so another config or machine compiles (and adds) its own.
"""

import os

import jax

OFF = 'off'
ENV = 'RECURSEED_COMPILATION_CACHE'  # the default folder, when set


def cache_folder(setting=''):
  """The cache folder a config.compilation_cache setting names, or None when 'off'."""
  setting = str(setting or '').strip()
  if setting.lower() == OFF:
    return None
  setting = setting or os.environ.get(ENV, '').strip()
  if setting:
    return os.path.abspath(os.path.expanduser(setting))
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'recurseed_jax', 'xla')


def enable(setting=''):
  """Points JAX's persistent cache at cache_folder(setting); returns the folder (or None)."""
  folder = cache_folder(setting)
  if folder is None:
    return None
  os.makedirs(folder, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', folder)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  return folder
