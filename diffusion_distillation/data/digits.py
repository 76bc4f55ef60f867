"""scikit-learn's bundled 8x8 handwritten digits (1,797 one-channel images).

Held in memory: no download and no TensorFlow, which makes it the data set for
tests and smoke runs. Its training batches are a pure function of
`(seed, step, process_index, process_count)`.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np

from diffusion_distillation.data import base


class Digits(base.Dataset):
  """scikit-learn's 8x8 handwritten digits, scaled from [0, 16] to [0, 255].

  There is no held-out split: `eval_batches` covers all 1,797 images, for either
  value of `split`.

  Training order: the infinite stream of examples is the concatenation of one
  random permutation per epoch, the permutation of epoch `e` being drawn from
  `(seed, e)`. Step `s` takes the stream positions `[s * B, (s + 1) * B)` for
  the global batch size `B`, and process `p` of `P` the contiguous `p`-th
  `B / P` of them. The random flip is also drawn per stream position. So a
  batch depends on `(seed, s, process_index, process_count)` only: a run
  resumed at `start_step` sees exactly the batches of an uninterrupted run, and
  the processes' shares put together are the single-process batch.
  """

  data_shape = (8, 8, 1)

  def __init__(self, *, class_conditional: bool = False,
               randflip: bool = True):
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
    digits = load_digits()
    images = np.asarray(digits.images, np.float32) * (255. / 16.)
    self._images = images[..., None]
    self._images.setflags(write=False)
    self._labels = np.asarray(digits.target, np.int32)
    self._zero_labels = np.zeros_like(self._labels)
    self.class_conditional = class_conditional
    self.randflip = randflip
    self.num_classes = 10 if class_conditional else 1
    self.num_train = self.num_eval = len(self._images)

  def _batch(self, indices: np.ndarray,
             flips: np.ndarray | None) -> base.Batch:
    images = self._images[indices]
    if flips is not None:
      images = np.where(flips[:, None, None, None], images[:, :, ::-1], images)
    labels = self._labels if self.class_conditional else self._zero_labels
    return {'image': images, 'label': labels[indices]}

  def _train_batches(self, *, global_batch_size, local_batch_size, seed,
                     start_step, process_index, process_count):
    del process_count  # the offsets of process_index cover it
    num = len(self._images)

    @functools.lru_cache(maxsize=4)
    def epoch_order(epoch: int) -> tuple[np.ndarray, np.ndarray]:
      rng = np.random.default_rng(base.seed_sequence(seed, epoch))
      return rng.permutation(num), rng.random(num) < 0.5

    offsets = process_index * local_batch_size + np.arange(local_batch_size)
    for step in itertools.count(start_step):
      epochs, within = np.divmod(step * global_batch_size + offsets, num)
      first, last = int(epochs[0]), int(epochs[-1])
      if first == last:
        perm, flip = epoch_order(first)
        indices, flips = perm[within], flip[within]
      else:  # The batch straddles one or more epoch boundaries.
        indices = np.empty(local_batch_size, np.int64)
        flips = np.empty(local_batch_size, bool)
        for epoch in range(first, last + 1):
          here = epochs == epoch
          perm, flip = epoch_order(epoch)
          indices[here], flips[here] = perm[within[here]], flip[within[here]]
      yield self._batch(indices, flips if self.randflip else None)

  def _eval_batches(self, *, batch_size, process_index, process_count, split):
    del split  # no held-out split: both are all the images
    # Same partition as `tfds.even_splits`: the first shards get the remainder.
    shard = np.array_split(np.arange(len(self._images)),
                           process_count)[process_index]
    return (self._batch(shard[i:i + batch_size], None)
            for i in range(0, len(shard), batch_size))
