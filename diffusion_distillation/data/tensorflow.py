"""TensorFlow and TensorFlow Datasets, imported only on first use.

So that importing the package (or using the digits data set or an image
folder) never pays for, or touches the GPU through, TensorFlow; it is always
hidden from the GPUs. They are the package's `tfds` extra.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

from diffusion_distillation import paths
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
        f"installed; install the tfds extra: {paths.install_command('tfds')}"
        ' (launch/run.sh: DD_EXTRAS=tfds)')


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
