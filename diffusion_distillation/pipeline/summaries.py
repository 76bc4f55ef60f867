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
from tensorboard.compat.proto import tensor_pb2
from tensorboard.compat.proto import types_pb2
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as layout_metadata
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.summary.writer import record_writer

from diffusion_distillation import config as config_lib
from diffusion_distillation import files

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


# The HParams columns shown first: what tells the stages apart.
FIRST_HPARAMS = ('stage', 'sampler_steps', 'model.mean_type', 'learning_rate',
                 'train.batch_size')
QUALITY = 'quality'  # eval/<series> runs: tag quality/<value> vs NFE
FINAL = 'final'  # stage runs: final/<value>, the student at its own steps


def experiment(config, first: dict, values) -> summary_pb2.Summary:
  """The HParams experiment: its columns (`FIRST_HPARAMS` first, then the
  stage's other values and the config's fields) and metrics (each stage's
  last loss and evaluated `values`)."""
  names = [*FIRST_HPARAMS, *(k for k in first if k not in FIRST_HPARAMS),
           *_flat_hparams(config)]
  metrics = [hparams_summary.Metric('loss', display_name='final loss')] + [
      hparams_summary.Metric(f'{FINAL}/{v}', display_name=v) for v in values]
  summary = hparams_summary.hparams_config_pb(
      [hparams_summary.HParam(n) for n in dict.fromkeys(names)], metrics)
  # The plugin lists the columns marked as differing first (by name); the
  # first of them are those a user sees without choosing columns.
  value = summary.value[0]
  data = plugin_data_pb2.HParamsPluginData.FromString(
      value.metadata.plugin_data.content)
  for info in data.experiment.hparam_infos:
    info.differs = info.name in FIRST_HPARAMS
  value.metadata.plugin_data.content = data.SerializeToString()
  return summary


def quality_layout(values) -> summary_pb2.Summary:
  """A custom-scalars layout: one chart per metric value in which every
  sampler (distilled, teacher DDIM, ancestral, each solver, each w) is a
  line against its network evaluations, the paper's quality-vs-steps
  figure."""
  charts = [layout_pb2.Chart(
      title=f'{v} vs network evaluations (x axis: NFE)',
      multiline=layout_pb2.MultilineChartContent(tag=[rf'^{QUALITY}/{v}$']))
            for v in values]
  layout = layout_pb2.Layout(category=[layout_pb2.Category(
      title='Quality vs network evaluations (paper Figure 4)', chart=charts)])
  # The plugin's own `summary.pb` builds this with TensorFlow.
  tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING,
                                  string_val=[layout.SerializeToString()])
  return summary_pb2.Summary(value=[summary_pb2.Summary.Value(
      tag=layout_metadata.CONFIG_SUMMARY_TAG, tensor=tensor,
      metadata=layout_metadata.create_summary_metadata())])


def write_series(logdir, name: str, series: dict, description: str = ''):
  """One complete event file `name` in `logdir`: `series` is tag ->
  {step: value}, written in increasing step order, so that TensorBoard's
  loader keeps every point whatever order they were measured in (a lower
  step than the last it read is a restart to it, and it drops the points
  after). Written under a name it does not read, then renamed.
  `description`: each tag's, shown by TensorBoard beside its chart."""
  logdir = epath.Path(logdir)
  logdir.mkdir(parents=True, exist_ok=True)
  events = [event_pb2.Event(file_version='brain.Event:2',
                            wall_time=time.time())]
  steps = sorted({step for points in series.values() for step in points})
  described = set()
  for step in steps:
    values = []
    for tag, points in series.items():
      if step in points:
        values.append(summary_pb2.Summary.Value(
            tag=tag, simple_value=points[step],
            metadata=None if tag in described else summary_pb2.SummaryMetadata(
                summary_description=description)))
        described.add(tag)
    events.append(event_pb2.Event(step=int(step), wall_time=time.time(),
                                  summary=summary_pb2.Summary(value=values)))
  partial = logdir / f'{name}.partial'
  with partial.open('wb') as f:
    writer = record_writer.RecordWriter(f)
    for event in events:
      writer.write(event.SerializeToString())
  partial.replace(logdir / name)


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

  def write_hparams(self, config, trial_id: str, first: dict):
    """This run as one HParams session `trial_id`: the `first` values (the
    stage's own: name, sampler steps, learning rate), then the config's
    declared fields, flattened."""
    self._add(event_pb2.Event(summary=hparams_summary.hparams_pb(
        {**first, **_flat_hparams(config)}, trial_id=trial_id)))

  def write_summary(self, summary: summary_pb2.Summary):
    """A summary made elsewhere (`experiment`, `quality_layout`)."""
    self._add(event_pb2.Event(summary=summary))

  def flush(self, force: bool = False):
    """Writes the pending events (an OSError names the run's directory)."""
    if not self._pending:
      return
    if (self._remote and not force and
        time.time() - self._last_flush < REMOTE_FLUSH_SECS):
      return
    with files.named_errors(self._dir):
      if self._file is None:
        self._dir.mkdir(parents=True, exist_ok=True)
        name = (f'events.out.tfevents.{int(time.time()):010d}.'
                f'{socket.gethostname()}.{os.getpid()}.'
                f'{next(_FILE_NUMBERS)}')
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
