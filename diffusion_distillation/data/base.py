"""The `Dataset` interface, the data order every data set shares
(`train_order`, `IndexedDataset`: a batch is a pure function of the seed and
the step, so a resumed run replays it exactly), and the argument checks and
seeding of the implementations.

Every batch is a dict of NumPy arrays::

    {'image': float32 [B, H, W, C] with values in [0, 255],
     'label': int32 [B]}  # all zeros when the data set is unconditional
"""

from __future__ import annotations

import abc
import collections
import concurrent.futures
import functools
import itertools
from typing import Iterator

from absl import logging
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

  def prepare(self) -> None:
    """Reads or checks what the data set needs before training (an image
    folder's index); a no-op for most."""

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
    if self.num_train < global_batch_size and not getattr(
        self, '_said_small', False):
      self._said_small = True  # once per data set, not once per stage
      logging.warning(
          'the training split has %d images, fewer than the batch of %d: '
          'every batch repeats them (more images, or a smaller '
          '--config.train.batch_size)', self.num_train, global_batch_size)
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


def train_order(num_examples: int, *, global_batch_size: int,
                local_batch_size: int, seed: int, start_step: int,
                process_index: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """`(indices, flips)` of this process's share of each step from `start_step`.

  The infinite stream of examples is the concatenation of one random
  permutation per epoch, the permutation of epoch `e` (and one coin per
  example for the random flip) being drawn from `(seed, e)`. Step `s` takes
  the stream positions `[s * B, (s + 1) * B)` for the global batch size `B`,
  and process `p` the contiguous `p`-th `local_batch_size` of them. So a batch
  depends on `(seed, s, process_index, process_count)` only: a run resumed at
  `start_step` sees exactly the batches of an uninterrupted run, and the
  processes' shares put together are the single-process batch.
  """

  @functools.lru_cache(maxsize=4)
  def epoch_order(epoch: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed_sequence(seed, epoch))
    return rng.permutation(num_examples), rng.random(num_examples) < 0.5

  offsets = process_index * local_batch_size + np.arange(local_batch_size)
  for step in itertools.count(start_step):
    epochs, within = np.divmod(step * global_batch_size + offsets,
                               num_examples)
    first, last = int(epochs[0]), int(epochs[-1])
    if first == last:
      perm, flip = epoch_order(first)
      yield perm[within], flip[within]
      continue
    indices = np.empty(local_batch_size, np.int64)  # straddles epochs
    flips = np.empty(local_batch_size, bool)
    for epoch in range(first, last + 1):
      here = epochs == epoch
      perm, flip = epoch_order(epoch)
      indices[here], flips[here] = perm[within[here]], flip[within[here]]
    yield indices, flips


def flip_left_right(images: np.ndarray, flips: np.ndarray) -> np.ndarray:
  """`images` [B, H, W, C] with those where `flips` mirrored left-right."""
  return np.where(flips[:, None, None, None], images[:, :, ::-1], images)


class IndexedDataset(Dataset):
  """A data set whose examples are read by index: batches are a pure function.

  Subclasses implement `_split_size(split)` and `_examples(split, indices)`
  (the batch of those examples, unflipped). Training batches follow
  `train_order`, so they resume exactly on any process count; evaluation
  batches are each process's contiguous share of the split, in index order
  (the partition of `tfds.even_splits`: the first shards get the remainder).
  With `prefetch > 0` that many batches are prepared ahead in a background
  thread, overlapping reading and decoding with training.
  """

  randflip: bool = False
  prefetch: int = 0

  @property
  def num_train(self) -> int:
    return self._split_size('train')

  @property
  def num_eval(self) -> int:
    return self._split_size('eval')

  @abc.abstractmethod
  def _split_size(self, split: str) -> int:
    """The number of examples of `split`."""

  @abc.abstractmethod
  def _examples(self, split: str, indices: np.ndarray) -> Batch:
    """The batch of `split`'s examples `indices`, without augmentation."""

  def _train_batches(self, *, global_batch_size, local_batch_size, seed,
                     start_step, process_index, process_count):
    del process_count  # the offsets of process_index cover it
    order = train_order(self._split_size('train'),
                        global_batch_size=global_batch_size,
                        local_batch_size=local_batch_size, seed=seed,
                        start_step=start_step, process_index=process_index)

    def batch(indices, flips):
      out = self._examples('train', indices)
      if self.randflip:
        out['image'] = flip_left_right(out['image'], flips)
      return out

    return _ahead(batch, order, self.prefetch)

  def _eval_batches(self, *, batch_size, process_index, process_count, split):
    shard = np.array_split(np.arange(self._split_size(split)),
                           process_count)[process_index]
    chunks = ((shard[i:i + batch_size],)
              for i in range(0, len(shard), batch_size))
    return _ahead(functools.partial(self._examples, split), chunks,
                  self.prefetch)


def _ahead(fn, args: Iterator[tuple], depth: int) -> Iterator[Batch]:
  """`fn(*a) for a in args`, computed `depth` items ahead in a thread."""
  if not depth:
    return (fn(*a) for a in args)
  return _prefetched(fn, args, depth)


def _prefetched(fn, args, depth):
  pool = concurrent.futures.ThreadPoolExecutor(1, 'dd-data')
  pending = collections.deque()
  try:
    for a in itertools.islice(args, depth):
      pending.append(pool.submit(fn, *a))
    while pending:
      result = pending.popleft().result()
      for a in itertools.islice(args, 1):
        pending.append(pool.submit(fn, *a))
      yield result
  finally:  # also when the consumer drops the iterator
    pool.shutdown(wait=False, cancel_futures=True)
