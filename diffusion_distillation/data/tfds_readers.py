"""Where a TFDS split's examples come from: host memory, single records, or a
stream (`TFDSDataset.source`).

A `Reader` reads the examples of given indices, so that batches can be a pure
function of the training step (`base.train_order`); the stream is the fallback
for data sets that cannot be read by index.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import time
from typing import Any, Callable, Optional, Sequence

from absl import logging
import numpy as np

from diffusion_distillation.data.tensorflow import import_tensorflow as _tfds

Records = dict[str, Sequence[Any]]


@dataclasses.dataclass(frozen=True)
class Reader:
  """One split's examples by index.

  Attributes:
    name: `<tfds name>/<split>`, for messages.
    source: `'memory'`, `'random_access'` or `'tf_data'` (read as a stream:
      `read` is None and the data set falls back to tf.data).
    size: the number of examples (0 for a stream).
    read: indices -> `{key: values}` of those examples, in that order.
  """
  name: str
  source: str
  size: int
  read: Optional[Callable[[np.ndarray], Records]]

  @property
  def streamed(self) -> bool:
    return self.read is None

  def __len__(self) -> int:
    return self.size


def open_split(name: str, split: str, *, data_dir: Optional[str], source: str,
               memory_limit: int, decoders, keys: Sequence[str]) -> Reader:
  """The `Reader` of TFDS `name`'s `split`, from `source` (or chosen: auto)."""
  _, tfds = _tfds()
  builder = tfds.builder(name, data_dir=data_dir)
  label = f'{name}/{split}'
  if source != 'tf_data':  # (tf.data's tfds.load prepares it itself)
    builder.download_and_prepare()  # once: then the split's size is known
  if source == 'auto':
    source = _auto_source(builder, split, memory_limit)
  if source == 'memory':
    return _memory_reader(builder, label, split, decoders, keys)
  if source == 'random_access':
    return _random_access_reader(builder, label, split, decoders, keys)
  logging.warning(
      '%s: read as a tf.data stream (dataset.source=tf_data): a resumed run '
      'does NOT replay the batches an uninterrupted run sees; for exact '
      'resume prepare the data set as array_record (tfds build '
      '--file_format=array_record) or set dataset.source=memory', label)
  return Reader(label, 'tf_data', 0, None)


def _auto_source(builder, split: str, memory_limit: int) -> str:
  """Memory if the split is small, else random access if possible, else a
  stream."""
  _, tfds = _tfds()
  try:
    stored = builder.info.splits[split].num_bytes
  except (KeyError, ValueError):  # no split metadata (TFDS's mock data)
    stored = None
  if stored is not None and stored <= memory_limit:
    return 'memory'
  if builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
    return 'random_access'
  if stored is None:
    return 'memory'
  return 'tf_data'


def _memory_reader(builder, label, split, decoders, keys) -> Reader:
  """The whole split in host memory, read once (CIFAR-10: 50k uint8 images,
  150 MB; encoded images are held as their bytes)."""
  tf, tfds = _tfds()
  t0 = time.time()
  ds = builder.as_dataset(split=split, decoders=decoders, shuffle_files=False)
  ds = ds.map(lambda ex: {k: ex[k] for k in keys}).batch(4096)
  parts = list(tfds.as_numpy(ds.prefetch(tf.data.AUTOTUNE)))
  arrays = {k: np.concatenate([p[k] for p in parts]) if parts else np.zeros(0)
            for k in keys}
  size = len(arrays[keys[0]])
  nbytes = sum(_nbytes(a) for a in arrays.values())
  logging.info('%s: %d examples read into memory (%.0f MB) in %.1fs', label,
               size, nbytes / 1e6, time.time() - t0)
  return Reader(label, 'memory', size,
                lambda indices: {k: a[indices] for k, a in arrays.items()})


def _nbytes(array: np.ndarray) -> int:
  if array.dtype == object:
    return sum(len(x) for x in array)
  return array.nbytes


def _random_access_reader(builder, label, split, decoders, keys) -> Reader:
  """Single records of an array_record data set (`tfds.data_source`)."""
  source = builder.as_data_source(split=split, decoders=decoders)
  logging.info('%s: %d examples, read by index (array_record)', label,
               len(source))

  def read(indices):
    records = [source[int(i)] for i in indices]
    return {k: [r[k] for r in records] for k in keys}

  return Reader(label, 'random_access', len(source), read)


@functools.cache
def _pool() -> concurrent.futures.ThreadPoolExecutor:
  return concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1,
                                               'dd-decode')


def map_threads(fn: Callable[[Any], np.ndarray],
                items: Sequence[Any]) -> np.ndarray:
  """`np.stack([fn(x) for x in items])`, computed in a shared thread pool
  (decoding releases the GIL)."""
  return np.stack(list(_pool().map(fn, items)))
