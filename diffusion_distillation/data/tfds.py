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
* `TFDSBuilder`: any TFDS image data set by name, preprocessed as LSUN.

Where the examples are read from (memory, array_record records, or a tf.data
stream) and why that makes resume exact: `TFDSDataset`, `tfds_readers`.

TensorFlow and TFDS are imported lazily (`data.tensorflow`), on the first use
of one of these data sets, so that importing this module (or using the digits data set) never pays
for, or touches the GPU through, TensorFlow. TensorFlow is always hidden from
the GPUs. They are the package's `tfds` extra (`pip install
'diffusion_distillation[tfds]'`); asking for one of these data sets without
them stops in one line that says so.
"""

from __future__ import annotations

import abc
import functools
from typing import Any

import numpy as np

from diffusion_distillation.config.choices import TFDS_SOURCES as SOURCES
from diffusion_distillation.data import base
from diffusion_distillation.data import tfds_readers as readers
from diffusion_distillation.data.tensorflow import check_installed  # pylint: disable=unused-import
from diffusion_distillation.data.tensorflow import import_tensorflow
from diffusion_distillation.data.tensorflow import MissingExtraError  # pylint: disable=unused-import


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


# `source='auto'` reads a split into host memory up to this many bytes (as
# stored: encoded JPEGs for ImageNet and LSUN). CIFAR-10's train split: 130 MB.
MEMORY_LIMIT_BYTES = 4 * 2**30


class TFDSDataset(base.IndexedDataset):
  """Base class for data sets read with TensorFlow Datasets.

  Subclasses set `tfds_name`, `splits` (our split name -> TFDS split),
  `encoded_images` (whether images are read as undecoded bytes) and implement
  `_preprocess_image` (one example's image -> float32 [H, W, C] in [0, 255]).

  Where the examples come from, `source` (`dataset.source`):

  * `'memory'`: the whole split is read once into host memory (decoded uint8
    arrays, or the encoded bytes) and batches index it.
  * `'random_access'`: `tfds.data_source`, which reads single records of a
    data set prepared as array_record (`tfds build --file_format=array_record`).
  * `'tf_data'`: the fallback for large data sets prepared as TFRecord, which
    cannot be read by index; see `_stream_train`. Its order is not replayed by
    a resumed run, and the log says so.
  * `'auto'`: memory up to `MEMORY_LIMIT_BYTES` of stored split, else random
    access when the data set is array_record, else tf_data.

  With the first two, training batches are `base.train_order`'s: a pure
  function of (seed, stage, step, process share), so a killed run resumes with
  exactly the batches an uninterrupted run sees, on any process count. Each
  batch's images are preprocessed in a thread pool (TensorFlow releases the
  GIL) and batches are prepared `prefetch` ahead. The random flip is applied
  to the final image (the official code flips before resizing; the two differ
  at most by the one-pixel rounding of the crop offset).
  """

  tfds_name: str
  splits: dict[str, str]
  encoded_images: bool = False
  image_key: str = 'image'
  label_key: str = 'label'
  shuffle_buffer_size: int = 50_000  # of the tf_data fallback
  prefetch = 2

  def __init__(self, *, class_conditional: bool, randflip: bool,
               data_dir: str | None, source: str = 'auto'):
    if source not in SOURCES:
      raise ValueError(f'Unknown source {source!r}; expected one of '
                       f'{SOURCES}.')
    self.class_conditional = class_conditional
    self.randflip = randflip
    self.data_dir = data_dir
    self.source = source
    self._readers = {}

  @abc.abstractmethod
  def _preprocess_image(self, image: Any) -> Any:
    """Decoded uint8 (or encoded) image -> float32 `data_shape`, [0, 255]."""

  def _decoders(self):
    _, tfds = import_tensorflow()
    return ({self.image_key: tfds.decode.SkipDecoding()}
            if self.encoded_images else None)

  def _reader(self, split: str) -> readers.Reader:
    if split not in self._readers:
      self._readers[split] = readers.open_split(
          self.tfds_name, self.splits[split], data_dir=self.data_dir,
          source=self.source, memory_limit=MEMORY_LIMIT_BYTES,
          decoders=self._decoders(), keys=self._keys())
    return self._readers[split]

  def _keys(self) -> tuple[str, ...]:
    return ((self.image_key, self.label_key) if self.class_conditional
            else (self.image_key,))

  def _split_size(self, split):
    return len(self._reader(split))

  def _examples(self, split, indices):
    records = self._reader(split).read(indices)
    if self.encoded_images:
      images = readers.map_threads(self._preprocess_one,
                                   records[self.image_key])
    else:
      images = np.asarray(records[self.image_key], np.float32)
    if self.class_conditional:
      labels = np.asarray(records[self.label_key], np.int32)
    else:
      labels = np.zeros(len(indices), np.int32)
    return {'image': images, 'label': labels}

  @functools.cached_property
  def _preprocess_one(self):
    """One encoded image -> float32 `data_shape`, a compiled TF function."""
    tf, _ = import_tensorflow()
    fn = tf.function(self._preprocess_image,
                     input_signature=[tf.TensorSpec([], tf.string)])
    return lambda image: fn(image).numpy()

  def _train_batches(self, **kwargs):
    if self._reader('train').streamed:
      return self._stream_train(**kwargs)
    return super()._train_batches(**kwargs)

  def _eval_batches(self, **kwargs):
    if self._reader(kwargs['split']).streamed:
      return self._stream_eval(**kwargs)
    return super()._eval_batches(**kwargs)

  def _load(self, split: Any, shuffle_seed: int | None) -> Any:
    _, tfds = import_tensorflow()
    return tfds.load(
        self.tfds_name,
        split=split,
        data_dir=self.data_dir,
        shuffle_files=shuffle_seed is not None,
        read_config=tfds.ReadConfig(shuffle_seed=shuffle_seed),
        decoders=self._decoders())

  def _example(self, example: dict[str, Any]) -> dict[str, Any]:
    tf, _ = import_tensorflow()
    image = tf.ensure_shape(self._preprocess_image(example[self.image_key]),
                            self.data_shape)
    if self.class_conditional:
      label = tf.cast(example[self.label_key], tf.int32)
    else:
      label = tf.zeros([], tf.int32)
    return {'image': image, 'label': label}

  def _stream_train(self, *, global_batch_size, local_batch_size, seed,
                    start_step, process_index, process_count):
    """The tf_data fallback: reproducible for a given `start_step` (up to TFDS
    file-reading nondeterminism), but a run resumed at step k does NOT replay
    the batches an uninterrupted run sees from k on: it draws a fresh shuffle
    seeded by `(seed, k)`. Each process reads its own shard of the files
    (`tfds.split_for_jax_process`) through a `shuffle_buffer_size` buffer."""
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

  def _stream_eval(self, *, batch_size, process_index, process_count, split):
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
               data_dir: str | None = None, source: str = 'auto'):
    super().__init__(class_conditional=class_conditional, randflip=randflip,
                     data_dir=data_dir, source=source)
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
               data_dir: str | None = None, image_size: int = 64,
               source: str = 'auto'):
    super().__init__(class_conditional=class_conditional, randflip=randflip,
                     data_dir=data_dir, source=source)
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
  _NUM_TRAIN = {'church_outdoor': 126_227, 'bedroom': 3_033_042}

  def __init__(self, *, subset: str, randflip: bool = True,
               data_dir: str | None = None, image_size: int = 128,
               source: str = 'auto'):
    if subset not in self._NUM_TRAIN:
      raise ValueError(f'Unknown LSUN subset {subset!r}; expected one of '
                       f'{tuple(self._NUM_TRAIN)}.')
    super().__init__(class_conditional=False, randflip=randflip,
                     data_dir=data_dir, source=source)
    self.tfds_name, self.subset = f'lsun/{subset}', subset
    self.image_size = image_size
    self.data_shape = (image_size, image_size, 3)

  @property
  def num_train(self) -> int:
    return self._NUM_TRAIN[self.subset]

  def _preprocess_image(self, image):
    return resize_bilinear(decode_and_central_square_crop(image),
                           self.image_size)


def resize_bilinear(image: Any, size: int) -> Any:
  """uint8 [H, W, C] -> float32 [size, size, C]: the official LSUN resize
  (bilinear, antialiased), clipped to [0, 255]."""
  tf, _ = import_tensorflow()
  image = tf.image.resize(tf.cast(image, tf.float32), [size, size],
                          method='bilinear', antialias=True)
  return tf.clip_by_value(image, 0., 255.)


class TFDSBuilder(TFDSDataset):
  """Any TFDS image data set by name (`dataset.name='tfds'`).

  The image feature `image_key` is decoded from whatever it is stored as
  (JPEG, PNG, ...; grey-scale becomes RGB), cropped to its central square and
  resized to `image_size` as LSUN's (antialiased bilinear). Labels, when
  class-conditional, are the class feature `label_key`; their count is read
  from the builder's metadata.
  """

  encoded_images = True

  def __init__(self, *, tfds_name: str, image_size: int,
               image_key: str = 'image', label_key: str = 'label',
               train_split: str = 'train', eval_split: str = 'test',
               class_conditional: bool = False, randflip: bool = True,
               data_dir: str | None = None, source: str = 'auto'):
    super().__init__(class_conditional=class_conditional, randflip=randflip,
                     data_dir=data_dir, source=source)
    self.tfds_name, self.image_size = tfds_name, image_size
    self.image_key, self.label_key = image_key, label_key
    self.splits = {'train': train_split, 'eval': eval_split}
    self.data_shape = (image_size, image_size, 3)

  @functools.cached_property
  def num_classes(self) -> int:
    if not self.class_conditional:
      return 1
    _, tfds = import_tensorflow()
    features = tfds.builder(self.tfds_name, data_dir=self.data_dir
                            ).info.features
    label = features[self.label_key] if self.label_key in features else None
    if not hasattr(label, 'num_classes'):
      raise ValueError(f'{self.tfds_name} has no class feature '
                       f'{self.label_key!r} (its features: '
                       f'{", ".join(features)}); set dataset.label_key')
    return int(label.num_classes)

  def _preprocess_image(self, image):
    tf, _ = import_tensorflow()
    image = tf.io.decode_image(image, channels=3, expand_animations=False)
    shape = tf.shape(image)
    size = tf.minimum(shape[0], shape[1])
    image = tf.image.crop_to_bounding_box(
        image, shape[0] // 2 - size // 2, shape[1] // 2 - size // 2, size,
        size)  # the offsets of decode_and_central_square_crop
    return resize_bilinear(image, self.image_size)
