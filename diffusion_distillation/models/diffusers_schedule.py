"""A diffusers scheduler's discrete noise levels as a logSNR schedule on t.

diffusers' models are trained at T discrete timesteps k = 0, ..., T-1 with
`alphas_cumprod[k] = prod(1 - betas[:k+1])`. Our models live in continuous
time t in [0, 1] (`diffusion/schedules.py`). The map chosen here puts
timestep k at t = (k + 1) / T, with logSNR linear in t between neighbouring
timesteps and t = 0 one step beyond k = 0 (logSNR extrapolated linearly).
Then our sampler's grid t = i / N, i = N, ..., 1 is diffusers' timesteps
k = i T / N - 1 ('trailing' spacing) at their exact noise levels, and our
DDIM on an imported teacher is diffusers' DDIM (eta 0, `set_alpha_to_one`,
no clipping) step for step. The network gets the inverse map, logSNR -> k
(a float: distillation asks for noise levels between timesteps too).
"""

import math

import jax.numpy as jnp
import numpy as np

BETA_SCHEDULES = ('linear', 'scaled_linear', 'squaredcos_cap_v2')
PREDICTION_TYPES = ('epsilon', 'sample', 'v_prediction')
# diffusers' prediction_type -> our mean_type.
MEAN_TYPE_OF = {'epsilon': 'eps', 'sample': 'x', 'v_prediction': 'v'}

# DDPMScheduler / DDIMScheduler defaults.
_DEFAULTS = {'num_train_timesteps': 1000, 'beta_start': 0.0001,
             'beta_end': 0.02, 'beta_schedule': 'linear',
             'trained_betas': None, 'prediction_type': 'epsilon'}
# Settings that would change the model's noise levels or its output, and
# the only value the import honours.
_REFUSED_UNLESS = {'rescale_betas_zero_snr': False, 'thresholding': False}


def _cosine_betas(num_steps: int, max_beta: float = 0.999) -> np.ndarray:
  """diffusers' `betas_for_alpha_bar` (the 'squaredcos_cap_v2' schedule)."""
  alpha_bar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
  return np.array([
      min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps),
          max_beta) for i in range(num_steps)], np.float32)


def scheduler_settings(scheduler_json: dict) -> dict:
  """The settings of a scheduler config (`scheduler_config.json`, parsed)
  the import uses, checked.

  Raises:
    ValueError: a setting the import cannot honour, named, in one line.
  """
  for key, allowed in _REFUSED_UNLESS.items():
    value = scheduler_json.get(key, allowed)
    if value != allowed:
      raise ValueError(f'{key} = {value!r}: the import supports {allowed!r}')
  settings = {key: default if scheduler_json.get(key) is None else scheduler_json[key]
              for key, default in _DEFAULTS.items()}
  if settings['prediction_type'] not in PREDICTION_TYPES:
    raise ValueError(f"prediction_type = {settings['prediction_type']!r}: "
                     f'the import supports {PREDICTION_TYPES}')
  if (settings['trained_betas'] is None and
      settings['beta_schedule'] not in BETA_SCHEDULES):
    raise ValueError(f"beta_schedule = {settings['beta_schedule']!r}: the "
                     f'import supports {BETA_SCHEDULES} or trained_betas')
  return settings


def betas(settings: dict) -> np.ndarray:
  """The scheduler's betas (float32, as diffusers computes them)."""
  num = settings['num_train_timesteps']
  if settings['trained_betas'] is not None:
    return np.asarray(settings['trained_betas'], np.float32)
  name = settings['beta_schedule']
  if name == 'squaredcos_cap_v2':
    return _cosine_betas(num)
  start, end = settings['beta_start'], settings['beta_end']
  if name == 'scaled_linear':
    return np.linspace(start ** .5, end ** .5, num, dtype=np.float32) ** 2
  return np.linspace(start, end, num, dtype=np.float32)


def timestep_logsnrs(settings: dict) -> tuple:
  """logSNR at each discrete timestep k (a tuple: hashable for jit)."""
  # As torch forms it on CPU (where diffusers' schedulers compute it): the
  # float32 factors' running product in float64, each rounded to float32.
  alphas = (1. - betas(settings)).astype(np.float64)
  alphas_cumprod = np.cumprod(alphas).astype(np.float32)
  a = alphas_cumprod.astype(np.float64)
  return tuple(float(x) for x in np.log(a) - np.log1p(-a))


def _grid(logsnrs: tuple):
  """(t, logSNR) at t = j / T, j = 0, ..., T (t = 0 extrapolated)."""
  values = np.asarray(logsnrs, np.float64)
  first = 2 * values[0] - values[1]
  grid = np.concatenate([[first], values])
  return np.linspace(0., 1., len(grid)), grid


def logsnr_at(t, logsnrs: tuple):
  """The schedule: logSNR at time t in [0, 1] (linear between timesteps)."""
  ts, grid = _grid(logsnrs)
  return jnp.interp(jnp.asarray(t, jnp.float32), ts.astype(np.float32),
                    grid.astype(np.float32))


def timestep_at(logsnr, logsnrs: tuple):
  """The inverse map: diffusers' (float) timestep k of a logSNR, so that
  k = (T t - 1) at logSNR = logsnr_at(t)."""
  ts, grid = _grid(logsnrs)
  t = jnp.interp(jnp.asarray(logsnr, jnp.float32),
                 grid[::-1].astype(np.float32), ts[::-1].astype(np.float32))
  return len(logsnrs) * t - 1.
