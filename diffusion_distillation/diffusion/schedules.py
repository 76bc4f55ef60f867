"""LogSNR schedules: maps from time t in [0, 1] to log signal-to-noise ratio.

Convention (as in the official code): t=0 -> logsnr_max (almost clean data),
t=1 -> logsnr_min (almost pure noise). Schedules are looked up by name so that a
config can select one with `dict(name='cosine', logsnr_min=-20., logsnr_max=20.)`.
"""

import functools
from typing import Callable

import jax.numpy as jnp
import numpy as np

ScheduleFn = Callable[[jnp.ndarray], jnp.ndarray]


def cosine_logsnr(t, *, logsnr_min: float, logsnr_max: float):
  """The cosine schedule of Nichol & Dhariwal, truncated to [logsnr_min, logsnr_max].

  alpha_t = cos(pi/2 * t') with t' an affine map of t chosen so that the
  endpoints hit the requested logSNR range exactly:
  logsnr(t) = -2 log tan(a t + b).
  """
  if not logsnr_min < logsnr_max:
    raise ValueError(
        f'cosine schedule needs logsnr_min < logsnr_max, got {logsnr_min} and '
        f'{logsnr_max}')
  b = np.arctan(np.exp(-0.5 * logsnr_max))
  a = np.arctan(np.exp(-0.5 * logsnr_min)) - b
  return -2. * jnp.log(jnp.tan(a * jnp.asarray(t) + b))


_SCHEDULES = {
    'cosine': cosine_logsnr,
}


def get_logsnr_schedule(name: str, **kwargs) -> ScheduleFn:
  """Returns `fn(t) -> logsnr` for the schedule called `name`.

  Args:
    name: the schedule; 'cosine' is the only one (the official code's).
    **kwargs: its settings: `logsnr_min`, `logsnr_max` for 'cosine'.

  Returns:
    `fn(t)`, t in [0, 1]: t=0 gives logsnr_max, t=1 logsnr_min.

  Raises:
    ValueError: an unknown schedule name.
  """
  if name not in _SCHEDULES:
    raise ValueError(
        f'unknown logsnr schedule {name!r}; known: {sorted(_SCHEDULES)}')
  return functools.partial(_SCHEDULES[name], **kwargs)
