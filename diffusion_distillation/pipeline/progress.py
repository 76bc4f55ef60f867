"""One progress line per logging interval: stage k of n, rate and ETAs.

    stage 3/8 distill_64: step 100/150 (67%), loss 0.0123, 412 images/s,
    stage ETA 12s, run ETA ~1m 50s (estimate)

The first interval of a stage includes compiling its update, so rates are
measured from the end of that interval on. The run's ETA adds the remaining
stages, estimated from their update counts at the rate measured for their
kind (teacher training or distillation); while a kind has not been measured
yet the rate of the other kind stands in and the ETA says `(estimate)`.
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
    self.seconds_per_update = {}  # is_distillation -> measured rate

  def stage(self, stage: Stage) -> 'StageProgress':
    return StageProgress(self, stage)

  def remaining_after(self, stage: Stage) -> tuple[Optional[float], bool]:
    """(seconds, is_estimate) for the stages after `stage`."""
    total, estimate = 0.0, False
    for later in self.stages[self.stages.index(stage) + 1:]:
      rate = self.seconds_per_update.get(later.is_distillation)
      if rate is None:
        rate = next(iter(self.seconds_per_update.values()), None)
        estimate = True
      if rate is None:
        return None, True
      total += rate * later.num_updates
    return total, estimate


class StageProgress:
  """Logs the progress line of one stage; feeds its rate to the run."""

  def __init__(self, run: RunProgress, stage: Stage):
    self._run, self._stage = run, stage
    self._index = run.stages.index(stage) + 1
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
      self._run.seconds_per_update[stage.is_distillation] = rate
      left = rate * (total - step)
      parts += [f'{self._run.batch_size / rate:.0f} images/s',
                f'stage ETA {format_duration(left)}']
      later, estimate = self._run.remaining_after(stage)
      if later is not None:
        parts.append(f'run ETA {"~" if estimate else ""}'
                     f'{format_duration(left + later)}'
                     f'{" (estimate)" if estimate else ""}')
    logging.info('%s', ', '.join(parts))
