"""Orbax wrapper: the one place that knows the Orbax API, so an API move is one edit.

A checkpoint holds one pytree (the train state without its static parts). Orbax writes each step
to a temporary folder and renames it when complete, so a killed run never leaves a half
checkpoint that `latest_step` would pick up (and the next run deletes the leftover). Saves are
asynchronous by default: `save` copies the arrays to host memory and returns while a background
thread writes them; `wait` (also called by `close`) blocks until every write is committed.
Every process of a multi-host run calls the same methods; Orbax decides who writes what.
`restore` first compares the stored shapes with the target's and names the first key that
differs (CheckpointMismatchError), instead of Orbax's error deep in an async read.
"""

import os

import jax
import orbax.checkpoint as ocp


class CheckpointMismatchError(ValueError):
  """A stored checkpoint whose tree or shapes differ from what the config builds."""


def _key_name(entry):
  for attr in ('key', 'name', 'idx'):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def _shapes(tree):
  """{'params/conv/kernel': shape} of the array leaves of a tree or of Orbax metadata."""
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, 'shape'))[0]
  return {'/'.join(_key_name(k) for k in path): tuple(leaf.shape)
          for path, leaf in leaves if hasattr(leaf, 'shape')}


class Checkpoints:
  """Saving every `every` steps (the caller asks `due`), keep-N, resume from the latest step."""

  def __init__(self, directory, keep=2, every=None, async_save=True):
    self.directory = os.path.abspath(directory)
    self.every = every or 1
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, cleanup_tmp_directories=True,
        enable_async_checkpointing=async_save)
    # The handler named up front lets `item_metadata` read a step's shapes before a restore.
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_handlers=ocp.StandardCheckpointHandler())

  def latest_step(self):
    return self._manager.latest_step()

  def due(self, step):
    """Whether the periodic schedule saves at `step`."""
    return step % self.every == 0

  def reached_preemption(self, step):
    """Multi-host preemption (SIGTERM to any process): True at the same step on every process.

    Call it at every step on every process. Always False in a single-process run (its signals
    are handled by the training loop).
    """
    return self._manager.reached_preemption(step)

  def save(self, step, tree):
    """Saves `tree` as `step` (unless that step is saved already); returns whether it saved."""
    if step in self._manager.all_steps():
      return False
    return self._manager.save(step, args=ocp.args.StandardSave(tree), force=True)

  def restore(self, like, step=None):
    """Restores `step` (default: latest) into the structure, shapes, dtypes and shardings of
    `like` (arrays or jax.ShapeDtypeStruct with a sharding)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    if abstract is not None:
      self._check_fits(step, abstract)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def _check_fits(self, step, abstract):
    """Raises CheckpointMismatchError at the first key whose stored shape differs from `like`."""
    stored = _shapes(self._manager.item_metadata(step).tree)
    wanted = _shapes(abstract)
    where = os.path.join(self.directory, str(step))
    for key in sorted(set(stored) | set(wanted)):
      a, b = stored.get(key), wanted.get(key)
      if a == b:
        continue
      if b is None:
        detail = f'{key} (shape {a}) is only in the checkpoint'
      elif a is None:
        detail = f'{key} (shape {b}) is only in what this config builds'
      else:
        detail = f'{key} has shape {a} in the checkpoint but {b} for this config'
      raise CheckpointMismatchError(
          f'checkpoint {where} does not fit the config: {detail}. It was written with another '
          'config (model, classes or training fields); rerun with that config, or pass a new '
          '--workdir')

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
