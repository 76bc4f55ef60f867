"""When training has blown up: a loss that is NaN or Inf, far above any
training loss, or orders of magnitude above the losses just before.

The trainer asks `Guard.check` at every logging point and before every
save, so no checkpoint is written after the loss went bad and a rerun
resumes from a healthy one.
"""

import collections
import math
import statistics

import jax

from diffusion_distillation.errors import UserError
from diffusion_distillation.pipeline import update
from diffusion_distillation.pipeline.stages import Stage


class DivergenceError(UserError):
  """The loss blew up (NaN, Inf, or orders of magnitude too large); no
  checkpoint taken after it did was saved."""


# Every objective's loss is a mean of squared errors between unit-scale
# quantities (data in [-1, 1], noise and v of unit variance), weighted by at
# most 1 + SNR at the training schedule's logsnr_max. A loss this many times
# that weight has blown up, as has one this many times the median of the
# last losses logged (a student's loss starts small).
DIVERGED_FACTOR = 1e4
_RECENT_LOSSES = 8
# Growth counts only above one unit-scale squared error: a loss that starts
# near zero (stage one of guided distillation, whose student is its teacher
# at w = 0, logs ~1e-9) grows by orders of magnitude while training well.
_GROWTH_FLOOR = 1.


class Guard:
  """Checks one stage's loss and parameters (and EMA) on the host, where the
  trainer syncs anyway; never per step."""

  def __init__(self, config, stage: Stage):
    self._config, self._stage = config, stage
    self._skip = config.train.enable_update_skip
    self._finite = jax.jit(update.all_finite)
    self._recent = collections.deque(maxlen=_RECENT_LOSSES)
    logsnr_max = config.model.train_logsnr_schedule.logsnr_max
    self._bound = DIVERGED_FACTOR * (1. + math.exp(min(logsnr_max, 80.)))

  def check(self, step: int, state, scalars: dict) -> float:
    """Raises DivergenceError if the last call's loss (`scalars`, its means)
    or `state` went bad; returns the loss."""
    loss = scalars['loss']
    if not math.isfinite(loss):
      # With update skip, a non-finite update is dropped; a call that kept
      # none of its updates no longer trains.
      if not self._skip or scalars.get('skipped', 0.) >= 1.:
        raise self._error(step, f'the loss is {loss}', non_finite=True)
    elif loss > self._bound:
      raise self._error(step, f'the loss is {loss:.3g}, far above any '
                        f'training loss (bound {self._bound:.3g})')
    elif (self._recent and loss > _GROWTH_FLOOR and
          0 < DIVERGED_FACTOR * self._median() < loss):
      raise self._error(step, f'the loss grew over {DIVERGED_FACTOR:g}-fold, '
                        f'to {loss:.3g}')
    else:
      self._recent.append(loss)
    if not bool(self._finite((state.params, state.ema_params))):
      raise self._error(step, 'the parameters hold NaN or Inf',
                        non_finite=True)
    return loss

  def _median(self):
    return statistics.median(self._recent) if self._recent else None

  def _error(self, step: int, what: str, non_finite: bool = False):
    section = self._stage.settings
    rate = self._config[section].learning_rate
    last = (f'the last healthy losses: median {median:.6g}'
            if (median := self._median()) is not None else
            'no healthy loss logged before')
    hint = ('' if self._skip or not non_finite else
            ', or set --config.train.enable_update_skip=true to skip '
            'non-finite updates')
    return DivergenceError(
        f'{self._stage.name} diverged at step {step}: {what} ({last}); no '
        'checkpoint after it was saved. Lower --config.'
        f'{section}.learning_rate (now {rate:g}) and rerun to resume from '
        f'the last checkpoint{hint}')
