"""One progress line per logging interval: stage k of n, rate and ETAs.

    stage 3/8 distill_64: step 100/150 (67%), loss 0.0123, 412 images/s,
    stage ETA 12s, run ETA ~1m 50s (estimate)

The first interval of a stage includes compiling its update, so rates are
measured from the end of that interval on. The run's ETA adds the remaining
stages, each estimated from its update count at the rate measured for its
kind (teacher training or distillation) plus the time a finished stage of
that kind spent outside its measured updates (compiling, the sample grid);
until a stage has finished, the current stage's time to its first logged
step beyond its updates (compiling) stands in for that, and until a kind has
been measured the other kind's figures stand in; the ETA then says
`(estimate)`.
"""

import time
from typing import Optional

from absl import logging

from diffusion_distillation.pipeline.stages import Stage


def format_duration(seconds: float) -> str:
  """`1h 02m`, `3m 05s` or `42s`."""
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f'{hours}h {minutes:02d}m'
  return f'{minutes}m {secs:02d}s' if minutes else f'{secs}s'


class RunProgress:
  """What the whole run knows: its stages and the measured seconds/update."""

  def __init__(self, stages, batch_size: int):
    self.stages = list(stages)
    self.batch_size = batch_size
    self.seconds_per_update = {}  # trains_student -> measured rate
    self.overhead = {}  # trains_student -> a finished stage's other seconds
    self.startup = {}  # trains_student -> seconds to the first logged step

  def stage(self, stage: Stage, start_step: int = 0) -> 'StageProgress':
    """The progress of `stage`, which (re)starts at `start_step` now."""
    return StageProgress(self, stage, start_step)

  def finished(self, stage: Stage, seconds: float):
    """Records what a stage trained here spent besides its updates."""
    rate = self.seconds_per_update.get(stage.trains_student)
    if rate is not None:
      self.overhead[stage.trains_student] = max(
          0., seconds - rate * stage.num_updates)

  def remaining_after(self, stage: Stage) -> tuple[Optional[float], bool]:
    """(seconds, is_estimate) for the stages after `stage`."""
    total, estimate = 0.0, False
    for later in self.stages[self.stages.index(stage) + 1:]:
      rate, rate_known = _measured(self.seconds_per_update,
                                   later.trains_student)
      if rate is None:
        return None, True
      overhead, overhead_known = self._overhead(later.trains_student)
      total += rate * later.num_updates + (overhead or 0.)
      estimate |= not (rate_known and overhead_known)
    return total, estimate

  def _overhead(self, kind: bool) -> tuple[Optional[float], bool]:
    """(seconds, measured) a stage of `kind` spends besides its updates.

    A finished stage's of that kind; else, in that order, the compiling of
    a stage of that kind, a finished stage's of the other kind, the other
    kind's compiling.
    """
    for by_kind in (self.overhead, self.startup):
      if kind in by_kind:
        return by_kind[kind], by_kind is self.overhead
    for by_kind in (self.overhead, self.startup):
      if by_kind:
        return next(iter(by_kind.values())), False
    return None, False


def _measured(by_kind: dict, kind: bool) -> tuple[Optional[float], bool]:
  """(value, measured for this kind): the other kind's value stands in."""
  if kind in by_kind:
    return by_kind[kind], True
  return next(iter(by_kind.values()), None), False


class StageProgress:
  """Logs the progress line of one stage; feeds its rate to the run."""

  def __init__(self, run: RunProgress, stage: Stage, start_step: int = 0):
    self._run, self._stage = run, stage
    self._index = run.stages.index(stage) + 1
    self._start = (time.time(), start_step)
    self._origin = None  # (time, step) once the first interval is done

  def log(self, step: int, loss: float):
    """Called at every logging interval, after the step's update finished."""
    now = time.time()
    stage, total = self._stage, self._stage.num_updates
    parts = [f'stage {self._index}/{len(self._run.stages)} {stage.name}: '
             f'step {step}/{total} ({100 * step // max(total, 1)}%)',
             f'loss {loss:.5g}']
    if self._origin is None or step <= self._origin[1]:
      self._origin = (now, step)
      parts.append('measuring speed (this interval includes compiling)')
    else:
      rate = (now - self._origin[0]) / (step - self._origin[1])
      self._run.seconds_per_update[stage.trains_student] = rate
      self._run.startup.setdefault(stage.trains_student, max(0., (
          self._origin[0] - self._start[0]) - rate * (
              self._origin[1] - self._start[1])))
      left = rate * (total - step)
      parts += [f'{self._run.batch_size / rate:.0f} images/s',
                f'stage ETA {format_duration(left)}']
      later, estimate = self._run.remaining_after(stage)
      if later is not None:
        parts.append(f'run ETA {"~" if estimate else ""}'
                     f'{format_duration(left + later)}'
                     f'{" (estimate)" if estimate else ""}')
    logging.info('%s', ', '.join(parts))
