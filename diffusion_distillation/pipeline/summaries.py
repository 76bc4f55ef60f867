"""TensorBoard event files written without TensorFlow.

clu's and TensorFlow's summary writers import TensorFlow (seconds, and no
`tensorflow-cpu` wheels on Linux aarch64 or macOS arm64), so training,
distillation and evaluation write the event protocol buffers themselves with
the `tensorboard` package's protos and record framing. Files go through
`etils.epath`, so `gs://` directories work wherever epath has a GCS backend.

Local event files are appended to and flushed at every `flush`, so
TensorBoard shows a run as it goes. Cloud object stores cannot append: there
the pending events go to a new event file at most every
`REMOTE_FLUSH_SECS` (and at `close`); TensorBoard reads every event file of a
directory.
"""

import io
import itertools
import os
import socket
import time

from etils import epath
import numpy as np
from PIL import Image
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.summary.writer import record_writer

from diffusion_distillation import config as config_lib

REMOTE_FLUSH_SECS = 120.0
# Numbers the event files of this process: two writers on one directory in
# the same second (a stage and its sample grid) never share a file name.
_FILE_NUMBERS = itertools.count()


def _png(image: np.ndarray) -> summary_pb2.Summary.Image:
  """A uint8 `[H, W, C]` image as the PNG summary TensorBoard displays."""
  image = np.asarray(image, np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
      buffer, format='PNG')
  return summary_pb2.Summary.Image(
      height=image.shape[0], width=image.shape[1],
      colorspace=image.shape[-1], encoded_image_string=buffer.getvalue())


def _flat_hparams(config) -> dict:
  """The config's declared fields (`config.FIELDS`, in their order) as
  `{'a.b': value}` with TensorBoard's value types."""
  flat = config_lib.flat_fields(config)
  return {field: value if isinstance(value, (bool, int, float, str))
          else str(value)  # None, tuples, lists
          for field, value in ((f, flat[f]) for f in config_lib.FIELDS
                               if f in flat)}


class SummaryWriter:
  """Scalars, images and hyperparameters for one TensorBoard run directory.

  `enabled=False` (processes other than 0) makes every call a no-op.
  """

  def __init__(self, logdir, enabled: bool = True):
    self._dir = epath.Path(logdir)
    self._enabled = enabled
    self._remote = '://' in os.fspath(logdir)
    self._pending, self._file = [], None
    self._last_flush = time.time()
    self._add(event_pb2.Event(file_version='brain.Event:2'))

  def _add(self, event: event_pb2.Event):
    if self._enabled:
      event.wall_time = event.wall_time or time.time()
      self._pending.append(event.SerializeToString())

  def _summary(self, step: int, values):
    self._add(event_pb2.Event(step=int(step),
                              summary=summary_pb2.Summary(value=values)))

  def write_scalars(self, step: int, scalars: dict):
    self._summary(step, [summary_pb2.Summary.Value(tag=k, simple_value=v)
                         for k, v in scalars.items()])

  def write_images(self, step: int, images: dict):
    """`images`: tag -> uint8 `[H, W, C]` (C = 1 or 3)."""
    self._summary(step, [summary_pb2.Summary.Value(tag=k, image=_png(v))
                         for k, v in images.items()])

  def write_hparams(self, config):
    """The (nested) config, flattened, as this run's hyperparameters."""
    self._add(event_pb2.Event(
        summary=hparams_summary.hparams_pb(_flat_hparams(config))))

  def flush(self, force: bool = False):
    if not self._pending:
      return
    if (self._remote and not force and
        time.time() - self._last_flush < REMOTE_FLUSH_SECS):
      return
    if self._file is None:
      self._dir.mkdir(parents=True, exist_ok=True)
      name = (f'events.out.tfevents.{int(time.time()):010d}.'
              f'{socket.gethostname()}.{os.getpid()}.{next(_FILE_NUMBERS)}')
      self._file = record_writer.RecordWriter(
          (self._dir / name).open('wb'))
    for record in self._pending:
      self._file.write(record)
    self._file.flush()
    self._pending, self._last_flush = [], time.time()
    if self._remote:  # an object is complete only once closed
      self._file.close()
      self._file = None

  def close(self):
    self.flush(force=True)
    if self._file is not None:
      self._file.close()
      self._file = None
