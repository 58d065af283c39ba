"""Orbax wrapper: the one place that knows the Orbax API, so an API move is one edit.

A checkpoint holds one pytree (the train state without its static parts). Orbax writes each step
to a temporary folder and renames it when complete, so a killed run never leaves a half
checkpoint that `latest_step` would pick up.
"""

import os

import jax
import orbax.checkpoint as ocp


class Checkpoints:
  """Periodic saving, keep-N, resume from the latest step of a folder."""

  def __init__(self, directory, keep=2, every=None):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=every or 1, create=True,
        cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self):
    return self._manager.latest_step()

  def save(self, step, tree, force=False):
    """Saves when the interval says so (or `force`); returns whether it saved."""
    return self._manager.save(step, args=ocp.args.StandardSave(tree), force=force)

  def restore(self, like, step=None):
    """Restores `step` (default: latest) into the structure, shapes and dtypes of `like`."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
