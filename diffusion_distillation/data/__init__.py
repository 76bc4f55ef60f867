"""Image data sets for training and for computing reference statistics.

`get_dataset(name, ...)` (or `from_config(config)`) returns a `Dataset` with two
kinds of iterators:

* `train_batches(...)`: an endless stream of this process's share of the global
  batch for consecutive training steps, shuffled and optionally randomly flipped
  left-right.
* `eval_batches(...)`: one pass over the evaluation images (test/validation
  split by default), in a fixed order, without augmentation.

Every batch is a dict of NumPy arrays::

    {'image': float32 [B, H, W, C] with values in [0, 255],
     'label': int32 [B]}  # all zeros when the data set is unconditional

(`Dataset.device_batch` sends whole-number images, CIFAR-10's, to the devices
as uint8.)

Data sets (`DATASET_NAMES`):

* `digits`: scikit-learn's 8x8 digits, in memory (`data.digits`); needs neither
  a download nor TensorFlow: the data set for tests and smoke runs.
* `cifar10`, `imagenet64`, `lsun_church128`, `lsun_bedroom128`: read with
  TensorFlow Datasets (`data.tfds`), which is only imported on their first use.
* `tfds`: any TFDS image data set by its TFDS name (`TFDSBuilder`).
* `image_folder`: a folder of PNG / JPEG / WebP images (`ImageFolder`).

Training batches are a pure function of (seed, step, process share) for all of
them (`base.train_order`), except for a TFDS data set too large for memory and
prepared as TFRecord, which falls back to a tf.data stream (`TFDSDataset`).
"""

from __future__ import annotations

import functools
import os

from diffusion_distillation.config.choices import DATASET_NAMES
from diffusion_distillation.config.choices import SIZED_DATASETS
from diffusion_distillation.config.choices import TFDS_SOURCES as SOURCES
from diffusion_distillation.data.base import Batch
from diffusion_distillation.data.base import Dataset
from diffusion_distillation.data.digits import Digits
from diffusion_distillation.data.image_folder import ImageFolder
from diffusion_distillation.data.image_folder import ImageFolderError
from diffusion_distillation.data.tfds import check_installed
from diffusion_distillation.data.tfds import CIFAR10
from diffusion_distillation.data.tfds import ImageNet
from diffusion_distillation.data.tfds import import_tensorflow
from diffusion_distillation.data.tfds import LSUN
from diffusion_distillation.data.tfds import TFDSBuilder
from diffusion_distillation.data.tfds import TFDSDataset

__all__ = [
    'Batch', 'CIFAR10', 'DATASET_NAMES', 'Dataset', 'Digits', 'ImageFolder',
    'ImageFolderError', 'ImageNet', 'INDEX_FILE', 'LSUN', 'SIZED_DATASETS',
    'SOURCES',
    'TFDSBuilder', 'TFDSDataset', 'from_config', 'get_dataset',
    'import_tensorflow', 'shape_of',
]


def _digits(*, name, class_conditional, randflip, data_dir, **_) -> Dataset:
  del name, data_dir  # Held in memory.
  return Digits(class_conditional=class_conditional, randflip=randflip)


def _cifar10(*, name, class_conditional, randflip, data_dir, source='auto',
             **_) -> Dataset:
  del name
  return CIFAR10(class_conditional=class_conditional, randflip=randflip,
                 data_dir=data_dir, source=source)


def _imagenet64(*, name, class_conditional, randflip, data_dir, source='auto',
                **_) -> Dataset:
  del name
  return ImageNet(class_conditional=class_conditional, randflip=randflip,
                  data_dir=data_dir, image_size=64, source=source)


def _lsun128(subset, *, name, class_conditional, randflip, data_dir,
             source='auto', **_) -> Dataset:
  if class_conditional:
    raise ValueError(f'{name!r} has no class labels; use '
                     'class_conditional=False.')
  return LSUN(subset=subset, randflip=randflip, data_dir=data_dir,
              image_size=128, source=source)


def _tfds(*, name, data_dir, tfds_name, image_size, **options) -> Dataset:
  del name
  keys = ('image_key', 'label_key', 'train_split', 'eval_split',
          'class_conditional', 'randflip', 'source')
  return TFDSBuilder(tfds_name=tfds_name, image_size=image_size,
                     data_dir=data_dir, **{k: options[k] for k in keys
                                           if k in options})


def _image_folder(*, name, path, image_size, **options) -> Dataset:
  del name
  keys = ('class_conditional', 'labels_from_subfolders', 'skip_unreadable',
          'eval_fraction', 'randflip', 'index_path', 'write_index')
  return ImageFolder(path=path, image_size=image_size,
                     **{k: options[k] for k in keys if k in options})


# The one registry of data set names.
_BUILDERS = {
    'digits': _digits,
    'cifar10': _cifar10,
    'imagenet64': _imagenet64,
    'lsun_church128': functools.partial(_lsun128, 'church_outdoor'),
    'lsun_bedroom128': functools.partial(_lsun128, 'bedroom'),
    'tfds': _tfds,
    'image_folder': _image_folder,
}

# The file, in the workdir, of an image folder's index (`ImageFolder`).
INDEX_FILE = 'image_folder_index.json'


def get_dataset(name: str,
                *,
                class_conditional: bool = False,
                randflip: bool = True,
                data_dir: str | None = None,
                **options) -> Dataset:
  """Returns the data set called `name` (one of `DATASET_NAMES`).

  Args:
    name: the data set name.
    class_conditional: whether batches carry the true class labels (and
      `num_classes` is the number of classes) instead of all-zero labels (and
      `num_classes == 1`). Not available for the LSUN data sets.
    randflip: whether training images are randomly flipped left-right.
    data_dir: TFDS data directory (`None`: the TFDS default). Unused by digits.
    **options: the data set's own (`source` for TFDS data sets, see
      `TFDSDataset`; `TFDSBuilder`'s and `ImageFolder`'s arguments).
  """
  dataset = _build(name, class_conditional=class_conditional,
                   randflip=randflip, data_dir=data_dir, **options)
  if isinstance(dataset, TFDSDataset):
    check_installed(name)
  return dataset


def _build(name: str, **kwargs) -> Dataset:
  """The data set object; nothing is read or imported until it is used."""
  if name not in _BUILDERS:
    raise ValueError(f'Unknown dataset {name!r}; known datasets: '
                     f'{", ".join(DATASET_NAMES)}.')
  return _BUILDERS[name](name=name, **kwargs)


def _config_args(config, workdir=None, write_index=True) -> dict:
  section = config.dataset
  args = dict(data_dir=section.data_dir or None,
              class_conditional=section.args.class_conditional,
              randflip=section.args.randflip)
  for key in ('source', 'tfds_name', 'image_key', 'label_key', 'train_split',
              'eval_split', 'image_size', 'path', 'labels_from_subfolders',
              'skip_unreadable', 'eval_fraction'):
    if key in section:
      args[key] = section[key]
  if workdir:
    args.update(index_path=os.path.join(os.fspath(workdir), INDEX_FILE),
                write_index=write_index)
  return args


def from_config(config, workdir=None, *, write_index: bool = True) -> Dataset:
  """The data set a config's `dataset` section describes, prepared.

  `workdir`: where an image folder's index is cached (and checked against the
  folder on a rerun); only the process with `write_index` writes it.
  """
  dataset = get_dataset(config.dataset.name,
                        **_config_args(config, workdir, write_index))
  dataset.prepare()
  return dataset


def shape_of(config) -> tuple[tuple[int, ...], int]:
  """`(data_shape, num_classes)` of a config's data set, which is neither
  read nor needs TensorFlow (for building the model alone; a `tfds` data
  set's class count is read from its metadata, with TensorFlow)."""
  dataset = _build(config.dataset.name, **_config_args(config))
  return tuple(dataset.data_shape), dataset.num_classes
