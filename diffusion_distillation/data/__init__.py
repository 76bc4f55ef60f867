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
"""

from __future__ import annotations

import functools

from diffusion_distillation.data.base import Batch
from diffusion_distillation.data.base import Dataset
from diffusion_distillation.data.digits import Digits
from diffusion_distillation.data.tfds import check_installed
from diffusion_distillation.data.tfds import CIFAR10
from diffusion_distillation.data.tfds import ImageNet
from diffusion_distillation.data.tfds import import_tensorflow
from diffusion_distillation.data.tfds import LSUN
from diffusion_distillation.data.tfds import TFDSDataset

__all__ = [
    'Batch', 'CIFAR10', 'DATASET_NAMES', 'Dataset', 'Digits', 'ImageNet',
    'LSUN', 'TFDSDataset', 'from_config', 'get_dataset', 'import_tensorflow',
    'shape_of',
]


def _digits(*, name, class_conditional, randflip, data_dir) -> Dataset:
  del name, data_dir  # Held in memory.
  return Digits(class_conditional=class_conditional, randflip=randflip)


def _cifar10(*, name, class_conditional, randflip, data_dir) -> Dataset:
  del name
  return CIFAR10(class_conditional=class_conditional, randflip=randflip,
                 data_dir=data_dir)


def _imagenet64(*, name, class_conditional, randflip, data_dir) -> Dataset:
  del name
  return ImageNet(class_conditional=class_conditional, randflip=randflip,
                  data_dir=data_dir, image_size=64)


def _lsun128(subset, *, name, class_conditional, randflip, data_dir) -> Dataset:
  if class_conditional:
    raise ValueError(f'{name!r} has no class labels; use '
                     'class_conditional=False.')
  return LSUN(subset=subset, randflip=randflip, data_dir=data_dir,
              image_size=128)


# The one registry of data set names.
_BUILDERS = {
    'digits': _digits,
    'cifar10': _cifar10,
    'imagenet64': _imagenet64,
    'lsun_church128': functools.partial(_lsun128, 'church_outdoor'),
    'lsun_bedroom128': functools.partial(_lsun128, 'bedroom'),
}

DATASET_NAMES = tuple(_BUILDERS)


def get_dataset(name: str,
                *,
                class_conditional: bool = False,
                randflip: bool = True,
                data_dir: str | None = None) -> Dataset:
  """Returns the data set called `name` (one of `DATASET_NAMES`).

  Args:
    name: the data set name.
    class_conditional: whether batches carry the true class labels (and
      `num_classes` is the number of classes) instead of all-zero labels (and
      `num_classes == 1`). Not available for the LSUN data sets.
    randflip: whether training images are randomly flipped left-right.
    data_dir: TFDS data directory (`None`: the TFDS default). Unused by digits.
  """
  dataset = _build(name, class_conditional=class_conditional,
                   randflip=randflip, data_dir=data_dir)
  if isinstance(dataset, TFDSDataset):
    check_installed(name)
  return dataset


def _build(name: str, **kwargs) -> Dataset:
  """The data set object; nothing is read or imported until it is used."""
  if name not in _BUILDERS:
    raise ValueError(f'Unknown dataset {name!r}; known datasets: '
                     f'{", ".join(DATASET_NAMES)}.')
  return _BUILDERS[name](name=name, **kwargs)


def _config_args(config) -> dict:
  section = config.dataset
  return dict(data_dir=section.data_dir or None,
              class_conditional=section.args.class_conditional,
              randflip=section.args.randflip)


def from_config(config) -> Dataset:
  """The data set a config's `dataset` section describes."""
  return get_dataset(config.dataset.name, **_config_args(config))


def shape_of(config) -> tuple[tuple[int, ...], int]:
  """`(data_shape, num_classes)` of a config's data set, which is neither
  read nor needs TensorFlow (for building the model alone)."""
  dataset = _build(config.dataset.name, **_config_args(config))
  return tuple(dataset.data_shape), dataset.num_classes
