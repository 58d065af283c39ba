"""The two shapes the stages see of a dataset, as typing.Protocols: a split and a provider.

The stages (recurseed_jax/stages/) take any provider of this shape and never import a reader,
so this module imports neither tensorflow nor one of them. Splits: data_pipeline/splits.py's
ArraySplit and FileSplit, data_pipeline/records.py's RecordSplit; providers: data_pipeline/
providers.py's SyntheticData, FileData and RecordData. Both Protocols are runtime_checkable:
isinstance checks that the members exist (tests/test_interfaces.py also checks the signatures).
"""

from typing import Iterator, Optional, Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class Split(Protocol):
  """One split of a dataset: ids, image-level labels, and images read one by one.

  Images may differ in size; consumers bucket them (recurseed_jax/infer.py). Errors name the file
  (data_pipeline/splits.py's docstring says which error for which fault).
  """

  ids: Sequence[str]  # image ids (file stems), in a fixed order
  labels: np.ndarray  # float32 [N, C] image-level labels (zeros where unknown, e.g. VOC test)
  has_masks: bool  # whether mask(i) exists (False for test splits)

  def __len__(self) -> int:
    """Number of images."""

  def image(self, i: int) -> np.ndarray:
    """uint8 [H, W, 3] RGB pixels of image i."""

  def mask(self, i: int) -> np.ndarray:
    """uint8 [H, W] label map of image i: 0 background, 1..C classes, 255 ignore."""

  def size(self, i: int) -> tuple:
    """(H, W) of image i, without decoding pixels where the format allows it."""


@runtime_checkable
class Provider(Protocol):
  """A dataset as the stages see it: its class names, its splits, its training stream."""

  class_names: Sequence[str]  # C names, no background

  def split(self, name: str) -> Split:
    """The split called `name`: 'train', 'val', and 'test' where the dataset has one.

    'train' is what RecurSeed trains on and makes pseudo masks for (VOC train_aug, COCO train).
    """

  def train_batches(self, start_step: int = 0, process_index: int = 0, process_count: int = 1,
                    config=None, mask_dir: Optional[str] = None) -> Iterator[dict]:
    """Augmented numpy batches of this process's rows of every global batch, from start_step on.

    Deterministic for config.seed. `config` replaces the provider's own for the batch size, seed
    and augmentation (the multi-stage segmenter has its own); `mask_dir` replaces the dataset's
    masks by `<mask_dir>/<id>.png` (pseudo masks as the segmenter's ground truth).
    """
