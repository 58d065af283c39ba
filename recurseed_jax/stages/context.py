"""What every stage is handed: the run's config, workdir, data, classes and the stages to run."""

import dataclasses
import os
from typing import Any, Callable, FrozenSet


@dataclasses.dataclass(frozen=True)
class Context:
  """One run of the pipeline, as a stage sees it (`run(ctx) -> dict` in each stage module).

  config: the completed config (recurseed_jax/config_lib.py). workdir: where everything is read
  and written. data: the provider (data_pipeline/providers.py: `split(name)`,
  `train_batches(...)`), built by launch.py so this package never imports tensorflow.
  class_names: the C foreground class names. todo: the stages this invocation still runs (a stage
  may do a later one's work on the way, e.g. seeds streaming into the CRF). log: where one-line
  progress notes go.
  """
  config: Any
  workdir: str
  data: Any
  class_names: tuple
  todo: FrozenSet[str] = frozenset()
  log: Callable[[str], None] = print

  def path(self, *parts):
    return os.path.join(self.workdir, *parts)

  @property
  def num_classes(self):
    return len(self.class_names)

  def replace(self, **changes):
    return dataclasses.replace(self, **changes)
