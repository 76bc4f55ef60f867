"""Data sets read with TensorFlow Datasets, following the official Progressive
Distillation code:

* `CIFAR10`: TFDS `cifar10`, 32x32x3; train split `train`, eval split `test`.
* `ImageNet`: TFDS `imagenet2012` (train / validation). The JPEG is decoded
  directly into its central square crop (along the long edge), which is then
  area-resized to `image_size` (64 for `imagenet64`). 1000 classes when
  class-conditional.
* `LSUN`: TFDS `lsun/church_outdoor` or `lsun/bedroom` (train / validation; the
  validation splits only hold 300 images). Central square crop, then bilinear
  resize with antialiasing to `image_size` (128). Unconditional only.

TensorFlow and TFDS are imported lazily, on the first use of one of these data
sets, so that importing this module (or using the digits data set) never pays
for, or touches the GPU through, TensorFlow. TensorFlow is always hidden from
the GPUs. They are the package's `tfds` extra (`pip install
'diffusion_distillation[tfds]'`); asking for one of these data sets without
them stops in one line that says so.
"""

from __future__ import annotations

import abc
import functools
import importlib.util
from typing import Any

from diffusion_distillation.data import base
from diffusion_distillation.errors import UserError


class MissingExtraError(UserError):
  """A TFDS data set was asked for, but TensorFlow (Datasets) is missing."""


def check_installed(dataset: str):
  """Raises MissingExtraError unless TensorFlow and TFDS can be imported.

  Checked without importing them (`find_spec`), so it costs nothing.
  """
  missing = [m for m in ('tensorflow', 'tensorflow_datasets')
             if importlib.util.find_spec(m) is None]
  if missing:
    raise MissingExtraError(
        f"data set '{dataset}' is read with TensorFlow Datasets, but "
        f"{' and '.join(missing)} {'are' if len(missing) > 1 else 'is'} not "
        "installed; install the tfds extra: "
        "pip install -e '.[tfds]' (launch/run.sh: DD_EXTRAS=tfds)")


@functools.cache
def import_tensorflow() -> tuple[Any, Any]:
  """Imports TensorFlow (hidden from the GPUs) and TFDS on first use.

  Returns `(tf, tfds)`. Public because code outside this module that touches
  TensorFlow before these data sets do (e.g. tests that build mock TFDS data)
  must import it through here, so that TensorFlow is hidden from the GPUs
  before it initializes.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # TF was already initialized by someone else.
    pass
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tf, tfds


def decode_and_central_square_crop(jpeg: Any) -> Any:
  """Decodes only the central square of a JPEG (cropping the long edge).

  The crop shared by `ImageNet` and `LSUN`; public so that tests can check it
  on a JPEG of known content.
  """
  tf, _ = import_tensorflow()
  shape = tf.io.extract_jpeg_shape(jpeg)
  height, width = shape[0], shape[1]
  size = tf.minimum(height, width)
  window = tf.stack(
      [height // 2 - size // 2, width // 2 - size // 2, size, size])
  return tf.io.decode_and_crop_jpeg(jpeg, window, channels=3)


class TFDSDataset(base.Dataset):
  """Base class for data sets read with TensorFlow Datasets.

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
    _, tfds = import_tensorflow()
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
    tf, _ = import_tensorflow()
    image = tf.ensure_shape(self._preprocess_image(example['image']),
                            self.data_shape)
    if self.class_conditional:
      label = tf.cast(example['label'], tf.int32)
    else:
      label = tf.zeros([], tf.int32)
    return {'image': image, 'label': label}

  def _train_batches(self, *, global_batch_size, local_batch_size, seed,
                     start_step, process_index, process_count):
    del global_batch_size  # each process batches its own split
    tf, tfds = import_tensorflow()
    file_seed, shuffle_seed, flip_seed = (
        int(s) for s in
        base.seed_sequence(seed, start_step, process_index).generate_state(3))

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

  def _eval_batches(self, *, batch_size, process_index, process_count, split):
    tf, tfds = import_tensorflow()
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
  whole_pixels = True  # uint8 images, flipped

  def __init__(self, *, class_conditional: bool = False, randflip: bool = True,
               data_dir: str | None = None):
    super().__init__(class_conditional=class_conditional, randflip=randflip,
                     data_dir=data_dir)
    self.num_classes = 10 if class_conditional else 1

  def _preprocess_image(self, image):
    tf, _ = import_tensorflow()
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
    tf, _ = import_tensorflow()
    image = tf.cast(decode_and_central_square_crop(image), tf.float32)
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
    tf, _ = import_tensorflow()
    image = tf.cast(decode_and_central_square_crop(image), tf.float32)
    image = tf.image.resize(image, [self.image_size, self.image_size],
                            method='bilinear', antialias=True)
    return tf.clip_by_value(image, 0., 255.)
