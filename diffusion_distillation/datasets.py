"""Image datasets for training and for computing reference statistics.

`get_dataset(name, ...)` returns a `Dataset` with two kinds of iterators:

* `train_batches(...)`: an endless stream of this process's share of the global
  batch for consecutive training steps, shuffled and optionally randomly flipped
  left-right.
* `eval_batches(...)`: one pass over the evaluation images (test/validation
  split by default), in a fixed order, without augmentation.

Every batch is a dict of NumPy arrays::

    {'image': float32 [B, H, W, C] with values in [0, 255],
     'label': int32 [B]}  # all zeros when the dataset is unconditional

Datasets (following the official Progressive Distillation code):

* `digits`: scikit-learn's bundled 8x8 handwritten digits (1,797 images, one
  channel), held in memory. No download and no TensorFlow, which makes it the
  dataset for tests and smoke runs. Its training batches are a pure function of
  `(seed, step, process_index, process_count)`.
* `cifar10`: TFDS `cifar10`, 32x32x3; train split `train`, eval split `test`.
* `imagenet64`: TFDS `imagenet2012` (train / validation). The JPEG is decoded
  directly into its central square crop (along the long edge), which is then
  area-resized to 64x64. 1000 classes when class-conditional.
* `lsun_church128`, `lsun_bedroom128`: TFDS `lsun/church_outdoor` and
  `lsun/bedroom` (train / validation; the validation splits only hold 300
  images). Central square crop, then bilinear resize with antialiasing to
  128x128. Unconditional only.

TensorFlow and TFDS are imported lazily, on the first use of a TFDS dataset, so
that the digits dataset never pays for (or touches the GPU through) TensorFlow.
TensorFlow is always hidden from the GPUs.
"""

from __future__ import annotations

import abc
import functools
import itertools
from typing import Any, Iterator

import numpy as np

Batch = dict[str, np.ndarray]

DATASET_NAMES = ('digits', 'cifar10', 'imagenet64', 'lsun_church128',
                 'lsun_bedroom128')

_SPLITS = ('train', 'eval')


def get_dataset(name: str,
                *,
                class_conditional: bool = False,
                randflip: bool = True,
                data_dir: str | None = None) -> Dataset:
  """Returns the dataset called `name` (one of `DATASET_NAMES`).

  Args:
    name: the dataset name.
    class_conditional: whether batches carry the true class labels (and
      `num_classes` is the number of classes) instead of all-zero labels (and
      `num_classes == 1`). Not available for the LSUN datasets.
    randflip: whether training images are randomly flipped left-right.
    data_dir: TFDS data directory (`None`: the TFDS default). Unused by digits.
  """
  if name == 'digits':
    return Digits(class_conditional=class_conditional, randflip=randflip)
  if name == 'cifar10':
    return CIFAR10(class_conditional=class_conditional, randflip=randflip,
                   data_dir=data_dir)
  if name == 'imagenet64':
    return ImageNet(class_conditional=class_conditional, randflip=randflip,
                    data_dir=data_dir, image_size=64)
  if name in ('lsun_church128', 'lsun_bedroom128'):
    if class_conditional:
      raise ValueError(f'{name!r} has no class labels; use '
                       'class_conditional=False.')
    subset = 'church_outdoor' if name == 'lsun_church128' else 'bedroom'
    return LSUN(subset=subset, randflip=randflip, data_dir=data_dir,
                image_size=128)
  raise ValueError(f'Unknown dataset {name!r}; known datasets: '
                   f'{", ".join(DATASET_NAMES)}.')


class Dataset(abc.ABC):
  """An image dataset.

  Attributes:
    data_shape: `(H, W, C)` of every image.
    num_classes: number of classes; 1 when unconditional.
    num_train: number of images in the training split.
    num_eval: number of images in the evaluation split.
  """

  data_shape: tuple[int, int, int]
  num_classes: int
  num_train: int
  num_eval: int

  @abc.abstractmethod
  def train_batches(self,
                    *,
                    global_batch_size: int,
                    seed: int,
                    start_step: int = 0,
                    process_index: int = 0,
                    process_count: int = 1) -> Iterator[Batch]:
    """Endless iterator over this process's share of the training batches.

    The first batch is for training step `start_step`, the next for
    `start_step + 1`, and so on. Each has `global_batch_size // process_count`
    examples; `global_batch_size` must be divisible by `process_count`.
    """

  @abc.abstractmethod
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
    `'train'`.
    """


def _check_process(process_index: int, process_count: int) -> None:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'Invalid process_index={process_index} for '
                     f'process_count={process_count}.')


def _local_batch_size(global_batch_size: int, process_index: int,
                      process_count: int) -> int:
  """Validates the sharding arguments; returns the per-process batch size."""
  _check_process(process_index, process_count)
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(f'global_batch_size={global_batch_size} must be positive '
                     f'and divisible by process_count={process_count}.')
  return global_batch_size // process_count


def _check_split(split: str) -> None:
  if split not in _SPLITS:
    raise ValueError(f'Unknown split {split!r}; expected one of {_SPLITS}.')


def _seed_sequence(*words: int) -> np.random.SeedSequence:
  """A SeedSequence from arbitrary (possibly negative) Python ints."""
  return np.random.SeedSequence([int(w) % 2**64 for w in words])


# --- In-memory: scikit-learn digits --------------------------------------------


class Digits(Dataset):
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

  def _batch(self, indices: np.ndarray, flips: np.ndarray | None) -> Batch:
    images = self._images[indices]
    if flips is not None:
      images = np.where(flips[:, None, None, None], images[:, :, ::-1], images)
    labels = self._labels if self.class_conditional else self._zero_labels
    return {'image': images, 'label': labels[indices]}

  def train_batches(self,
                    *,
                    global_batch_size: int,
                    seed: int,
                    start_step: int = 0,
                    process_index: int = 0,
                    process_count: int = 1) -> Iterator[Batch]:
    local_batch_size = _local_batch_size(global_batch_size, process_index,
                                         process_count)
    if start_step < 0:
      raise ValueError(f'start_step={start_step} must be non-negative.')
    return self._train_batches(seed, global_batch_size, local_batch_size,
                               start_step, process_index)

  def _train_batches(self, seed, global_batch_size, local_batch_size,
                     start_step, process_index):
    num = len(self._images)

    @functools.lru_cache(maxsize=4)
    def epoch_order(epoch: int) -> tuple[np.ndarray, np.ndarray]:
      rng = np.random.default_rng(_seed_sequence(seed, epoch))
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

  def eval_batches(self,
                   *,
                   batch_size: int,
                   process_index: int = 0,
                   process_count: int = 1,
                   split: str = 'eval') -> Iterator[Batch]:
    _check_split(split)
    _check_process(process_index, process_count)
    if batch_size < 1:
      raise ValueError(f'batch_size={batch_size} must be positive.')
    # Same partition as `tfds.even_splits`: the first shards get the remainder.
    shard = np.array_split(np.arange(len(self._images)),
                           process_count)[process_index]
    return (self._batch(shard[i:i + batch_size], None)
            for i in range(0, len(shard), batch_size))


# --- TensorFlow Datasets ---------------------------------------------------------


@functools.cache
def _import_tf() -> tuple[Any, Any]:
  """Imports TensorFlow (hidden from the GPUs) and TFDS on first use."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # TF was already initialized by someone else.
    pass
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tf, tfds


def _decode_and_central_square_crop(jpeg: Any) -> Any:
  """Decodes only the central square of a JPEG (cropping the long edge)."""
  tf, _ = _import_tf()
  shape = tf.io.extract_jpeg_shape(jpeg)
  height, width = shape[0], shape[1]
  size = tf.minimum(height, width)
  window = tf.stack([height // 2 - size // 2, width // 2 - size // 2, size, size])
  return tf.io.decode_and_crop_jpeg(jpeg, window, channels=3)


class TFDSDataset(Dataset):
  """Base class for datasets read with TensorFlow Datasets.

  Subclasses set `tfds_name`, `splits` (our split name -> TFDS split),
  `encoded_images` (whether images are read as undecoded bytes) and implement
  `_preprocess_image` (one example's image -> float32 [H, W, C] in [0, 255]).

  Training pipeline: each process reads its own disjoint shard of the training
  split (`tfds.split_for_jax_process`), with the file order and a
  `shuffle_buffer_size` example buffer shuffled from seeds derived from
  `(seed, start_step, process_index)`, repeats it forever, preprocesses, flips
  each example with a stateless coin drawn from the same seeds and the
  example's position in the stream, and batches to the per-process batch size.
  (The official code flips before resizing; flipping the final image instead is
  cheaper and differs at most by the one-pixel rounding of the crop offset.)
  `shuffle_buffer_size` (50,000 as in the official code) holds encoded JPEGs
  for ImageNet and LSUN; lower it on an instance if host memory is short.

  Resumption: for a given `start_step` the stream is reproducible (up to TFDS
  file-reading nondeterminism), but a run resumed at `start_step = k` does NOT
  replay the batches an uninterrupted run would have seen from step `k` on: it
  draws a fresh shuffle seeded by `(seed, k)`. Nothing is skipped, and the
  resumed run does not repeat the order of the run's first batches.
  """

  tfds_name: str
  splits: dict[str, str]
  encoded_images: bool = False
  shuffle_buffer_size: int = 50_000

  def __init__(self, *, class_conditional: bool, randflip: bool,
               data_dir: str | None):
    self.class_conditional = class_conditional
    self.randflip = randflip
    self.data_dir = data_dir

  @abc.abstractmethod
  def _preprocess_image(self, image: Any) -> Any:
    """Decoded uint8 (or encoded) image -> float32 `data_shape`, [0, 255]."""

  def _load(self, split: Any, shuffle_seed: int | None) -> Any:
    _, tfds = _import_tf()
    decoders = ({'image': tfds.decode.SkipDecoding()}
                if self.encoded_images else None)
    return tfds.load(
        self.tfds_name,
        split=split,
        data_dir=self.data_dir,
        shuffle_files=shuffle_seed is not None,
        read_config=tfds.ReadConfig(shuffle_seed=shuffle_seed),
        decoders=decoders)

  def _example(self, example: dict[str, Any]) -> dict[str, Any]:
    tf, _ = _import_tf()
    image = tf.ensure_shape(self._preprocess_image(example['image']),
                            self.data_shape)
    if self.class_conditional:
      label = tf.cast(example['label'], tf.int32)
    else:
      label = tf.zeros([], tf.int32)
    return {'image': image, 'label': label}

  def train_batches(self,
                    *,
                    global_batch_size: int,
                    seed: int,
                    start_step: int = 0,
                    process_index: int = 0,
                    process_count: int = 1) -> Iterator[Batch]:
    local_batch_size = _local_batch_size(global_batch_size, process_index,
                                         process_count)
    if start_step < 0:
      raise ValueError(f'start_step={start_step} must be non-negative.')
    tf, tfds = _import_tf()
    file_seed, shuffle_seed, flip_seed = (
        int(s) for s in
        _seed_sequence(seed, start_step, process_index).generate_state(3))

    def train_example(index, example):
      out = self._example(example)
      if self.randflip:
        coin = tf.random.stateless_uniform(
            [], seed=tf.stack([tf.constant(flip_seed, tf.int64), index]))
        out['image'] = tf.cond(coin < 0.5,
                               lambda: tf.image.flip_left_right(out['image']),
                               lambda: out['image'])
      return out

    split = tfds.split_for_jax_process(
        self.splits['train'], process_index=process_index,
        process_count=process_count)
    ds = self._load(split, shuffle_seed=file_seed)
    ds = ds.shuffle(self.shuffle_buffer_size, seed=shuffle_seed)
    ds = ds.repeat()
    ds = ds.enumerate()
    ds = ds.map(train_example, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(local_batch_size, drop_remainder=True)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    return ds.as_numpy_iterator()

  def eval_batches(self,
                   *,
                   batch_size: int,
                   process_index: int = 0,
                   process_count: int = 1,
                   split: str = 'eval') -> Iterator[Batch]:
    _check_split(split)
    _check_process(process_index, process_count)
    if batch_size < 1:
      raise ValueError(f'batch_size={batch_size} must be positive.')
    tf, tfds = _import_tf()
    shard = tfds.split_for_jax_process(
        self.splits[split], process_index=process_index,
        process_count=process_count)
    ds = self._load(shard, shuffle_seed=None)
    ds = ds.map(self._example, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    return ds.as_numpy_iterator()


class CIFAR10(TFDSDataset):
  """CIFAR-10 at its native 32x32 resolution."""

  tfds_name = 'cifar10'
  splits = {'train': 'train', 'eval': 'test'}
  data_shape = (32, 32, 3)
  num_train = 50_000
  num_eval = 10_000

  def __init__(self, *, class_conditional: bool = False, randflip: bool = True,
               data_dir: str | None = None):
    super().__init__(class_conditional=class_conditional, randflip=randflip,
                     data_dir=data_dir)
    self.num_classes = 10 if class_conditional else 1

  def _preprocess_image(self, image):
    tf, _ = _import_tf()
    return tf.cast(image, tf.float32)


class ImageNet(TFDSDataset):
  """ImageNet: central square crop, area-resized to `image_size`."""

  tfds_name = 'imagenet2012'
  splits = {'train': 'train', 'eval': 'validation'}
  encoded_images = True
  num_train = 1_281_167
  num_eval = 50_000

  def __init__(self, *, class_conditional: bool = False, randflip: bool = True,
               data_dir: str | None = None, image_size: int = 64):
    super().__init__(class_conditional=class_conditional, randflip=randflip,
                     data_dir=data_dir)
    self.image_size = image_size
    self.data_shape = (image_size, image_size, 3)
    self.num_classes = 1000 if class_conditional else 1

  def _preprocess_image(self, image):
    tf, _ = _import_tf()
    image = tf.cast(_decode_and_central_square_crop(image), tf.float32)
    image = tf.image.resize(image, [self.image_size, self.image_size],
                            method='area')
    return tf.clip_by_value(image, 0., 255.)


class LSUN(TFDSDataset):
  """An LSUN scene category: central square crop, antialiased bilinear resize.

  Args (constructor):
    subset: the TFDS config, `'church_outdoor'` or `'bedroom'`.
  """

  splits = {'train': 'train', 'eval': 'validation'}
  encoded_images = True
  num_classes = 1
  num_eval = 300

  def __init__(self, *, subset: str, randflip: bool = True,
               data_dir: str | None = None, image_size: int = 128):
    num_train = {'church_outdoor': 126_227, 'bedroom': 3_033_042}
    if subset not in num_train:
      raise ValueError(f'Unknown LSUN subset {subset!r}; expected one of '
                       f'{tuple(num_train)}.')
    super().__init__(class_conditional=False, randflip=randflip,
                     data_dir=data_dir)
    self.tfds_name = f'lsun/{subset}'
    self.num_train = num_train[subset]
    self.image_size = image_size
    self.data_shape = (image_size, image_size, 3)

  def _preprocess_image(self, image):
    tf, _ = _import_tf()
    image = tf.cast(_decode_and_central_square_crop(image), tf.float32)
    image = tf.image.resize(image, [self.image_size, self.image_size],
                            method='bilinear', antialias=True)
    return tf.clip_by_value(image, 0., 255.)
