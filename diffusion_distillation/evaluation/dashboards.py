"""Evaluation results in TensorBoard, arranged so that its charts compare.

* Quality vs cost: each column of the results (distilled, teacher DDIM,
  teacher ancestral, each solver, each guidance w) is its own run
  `WORKDIR/tensorboard/eval/<column>`, with the tags `quality/<value>`
  against the network evaluations (NFE) of sampling. Same tags in several runs are lines of one
  chart (Scalars, Time Series, and the custom-scalars layout that
  `loop.write_dashboards` writes).
* HParams: each stage's run gets `final/<value>`, its model scored at its own
  step count (a student's DDIM row; the teacher's at its sampler steps), the
  metrics of its session.

Rows are measured students first, most steps first; TensorBoard's loader
takes a step lower than the last as a restart and drops the points after it.
So each run's points are rewritten, sorted by step, into a new event file
after every row (the previous one removed): every point survives, and an
interrupted evaluation leaves the rows it measured.
"""

import itertools
import os
import socket
import time

from etils import epath

from diffusion_distillation.evaluation import report
from diffusion_distillation.pipeline import summaries


def series_name(row) -> str:
  """The run of a results row: its column ('teacher_ddim', 'distilled_w2')."""
  column = report.column_name(row['model'], row['sampler'],
                              row.get('guidance'), row.get('method'))
  return column.lower().replace(' ', '_').replace('=', '').replace(':', '_')


class QualityCurves:
  """Writes the rows of one evaluation to TensorBoard (process 0 only)."""

  def __init__(self, workdir, loaded, value_names, enabled: bool):
    self._root = epath.Path(workdir) / 'tensorboard'
    self._values, self._enabled = tuple(value_names), enabled
    self._file = (f'events.out.tfevents.{int(time.time()):010d}.'
                  f'{socket.gethostname()}.{os.getpid()}.eval')
    self._numbers = itertools.count()
    self._points, self._last_file = {}, {}
    teacher_steps = loaded.config.model.eval_sampling_num_steps
    self._stages = {
        ('distilled' if s.trains_student else 'teacher',
         s.num_sample_steps if s.trains_student else teacher_steps): s
        for s in loaded.stages if s.objective != 'guided_stage_one'}

  def add(self, row):
    """One measured row: its run's curve, and its stage's HParams metric."""
    values = {v: row[v] for v in self._values if row.get(v) is not None}
    if not self._enabled or not values:
      return
    series = series_name(row)
    curves = self._points.setdefault(series, {})
    for value, number in values.items():
      curves.setdefault(f'{summaries.QUALITY}/{value}', {})[
          report.nfe(row)] = number
    self._rewrite(series)
    stage = self._stages.get((row['model'], row['steps']))
    if stage and row['sampler'] == 'ddim' and row.get('guidance') is None:
      writer = summaries.SummaryWriter(self._root / stage.name)
      writer.write_scalars(stage.num_updates, {
          f'{summaries.FINAL}/{v}': n for v, n in values.items()})
      writer.close()

  def _rewrite(self, series: str):
    logdir = self._root / 'eval' / series
    name = f'{self._file}.{next(self._numbers):04d}'
    summaries.write_series(
        logdir, name, self._points[series],
        description=f'{series}: quality against the network evaluations '
        'of sampling (the x axis is NFE, not training steps)')
    if series in self._last_file:
      (logdir / self._last_file[series]).unlink(missing_ok=True)
    self._last_file[series] = name
