"""The `Dataset` interface, and the argument checks and seeding shared by its
implementations.

Every batch is a dict of NumPy arrays::

    {'image': float32 [B, H, W, C] with values in [0, 255],
     'label': int32 [B]}  # all zeros when the data set is unconditional
"""

from __future__ import annotations

import abc
from typing import Iterator

import numpy as np

Batch = dict[str, np.ndarray]

SPLITS = ('train', 'eval')


class Dataset(abc.ABC):
  """An image data set.

  Attributes:
    data_shape: `(H, W, C)` of every image.
    num_classes: number of classes; 1 when unconditional.
    num_train: number of images in the training split.
    num_eval: number of images in the evaluation split.
    whole_pixels: every pixel value of a training batch is a whole number
      (the data set's own uint8 values, at most flipped), so training sends
      the images to the devices as uint8, a quarter of the bytes.
  """

  data_shape: tuple[int, int, int]
  num_classes: int
  num_train: int
  num_eval: int
  whole_pixels: bool = False

  def device_batch(self, batch: Batch) -> Batch:
    """A training batch as it goes to the devices: uint8 images where
    `whole_pixels` (the same values; the update converts them)."""
    if not self.whole_pixels:
      return batch
    return dict(batch, image=batch['image'].astype(np.uint8))

  def train_batches(self,
                    *,
                    global_batch_size: int,
                    seed: int,
                    start_step: int = 0,
                    process_index: int = 0,
                    process_count: int = 1) -> Iterator[Batch]:
    """Endless iterator over this process's share of the training batches.

    Shuffled, and randomly flipped left-right if the data set was built with
    `randflip=True`. The first batch is for training step `start_step`, the
    next for `start_step + 1`, and so on. Each has
    `global_batch_size // process_count` examples; `global_batch_size` must be
    divisible by `process_count`. The arguments are checked here, at the
    call, not at the first batch.
    """
    local_batch_size = check_train_args(global_batch_size, start_step,
                                        process_index, process_count)
    return self._train_batches(
        global_batch_size=global_batch_size, local_batch_size=local_batch_size,
        seed=seed, start_step=start_step, process_index=process_index,
        process_count=process_count)

  def eval_batches(self,
                   *,
                   batch_size: int,
                   process_index: int = 0,
                   process_count: int = 1,
                   split: str = 'eval') -> Iterator[Batch]:
    """One pass over this process's share of `split`, in a fixed order.

    No augmentation is applied. The last batch may be smaller than
    `batch_size`. The processes' shares are disjoint, contiguous and together
    cover the whole split. `split` is `'eval'` (the test/validation split) or
    `'train'`. The arguments are checked here, at the call.
    """
    check_eval_args(batch_size, process_index, process_count, split)
    return self._eval_batches(batch_size=batch_size,
                              process_index=process_index,
                              process_count=process_count, split=split)

  @abc.abstractmethod
  def _train_batches(self, *, global_batch_size: int, local_batch_size: int,
                     seed: int, start_step: int, process_index: int,
                     process_count: int) -> Iterator[Batch]:
    """`train_batches` after its arguments were checked."""

  @abc.abstractmethod
  def _eval_batches(self, *, batch_size: int, process_index: int,
                    process_count: int, split: str) -> Iterator[Batch]:
    """`eval_batches` after its arguments were checked."""


def check_process(process_index: int, process_count: int) -> None:
  """Raises ValueError unless `0 <= process_index < process_count`."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'Invalid process_index={process_index} for '
                     f'process_count={process_count}.')


def check_train_args(global_batch_size: int, start_step: int,
                     process_index: int, process_count: int) -> int:
  """Validates `train_batches`' arguments; returns the local batch size."""
  check_process(process_index, process_count)
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(f'global_batch_size={global_batch_size} must be positive '
                     f'and divisible by process_count={process_count}.')
  if start_step < 0:
    raise ValueError(f'start_step={start_step} must be non-negative.')
  return global_batch_size // process_count


def check_eval_args(batch_size: int, process_index: int, process_count: int,
                    split: str) -> None:
  """Validates `eval_batches`' arguments."""
  if split not in SPLITS:
    raise ValueError(f'Unknown split {split!r}; expected one of {SPLITS}.')
  check_process(process_index, process_count)
  if batch_size < 1:
    raise ValueError(f'batch_size={batch_size} must be positive.')


def seed_sequence(*words: int) -> np.random.SeedSequence:
  """A SeedSequence from arbitrary (possibly negative) Python ints."""
  return np.random.SeedSequence([int(w) % 2**64 for w in words])
