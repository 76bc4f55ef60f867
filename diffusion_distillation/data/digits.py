"""scikit-learn's bundled 8x8 handwritten digits (1,797 one-channel images).

Held in memory: no download and no TensorFlow, which makes it the data set for
tests and smoke runs. Its training batches are a pure function of
`(seed, step, process_index, process_count)` (`base.train_order`).
"""

from __future__ import annotations

import numpy as np

from diffusion_distillation.data import base


class Digits(base.IndexedDataset):
  """scikit-learn's 8x8 handwritten digits, scaled from [0, 16] to [0, 255].

  There is no held-out split: `eval_batches` covers all 1,797 images, for either
  value of `split`. Training order: `base.train_order`.
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

  def _split_size(self, split):
    del split  # no held-out split
    return len(self._images)

  def _examples(self, split, indices):
    del split
    labels = self._labels if self.class_conditional else self._zero_labels
    return {'image': self._images[indices], 'label': labels[indices]}
