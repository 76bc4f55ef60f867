"""Step grids: where an N-step sampler queries the model, as logSNR values.

Grid point j = N, ..., 0 runs from noise to data; j = N is t = 1 (the
schedule's logsnr_min) and j = 0 is t = 0 (its logsnr_max) on every grid:

* 'time_uniform': t = j / N, progressive distillation's grid (and the only
  one a distilled student is trained for);
* 'logsnr_uniform': logSNR uniform between the two ends, DPM-Solver's
  default ('logSNR' in its code);
* 'karras': EDM's grid, sigma / alpha = exp(-logsnr / 2) uniform in its
  1/rho-th power, rho = 7 (Karras et al., 2022, eq. 5).

`j` and `num_steps` may be traced: one compiled loop serves every step
count.
"""

import jax.numpy as jnp

KARRAS_RHO = 7.


def logsnr_at(grid: str, j, num_steps, logsnr_schedule_fn):
  """The logSNR of grid point `j` of `num_steps` (a scalar)."""
  frac = jnp.asarray(j).astype(jnp.float32) / num_steps
  if grid == 'time_uniform':
    return logsnr_schedule_fn(frac)
  noisiest, cleanest = logsnr_schedule_fn(1.), logsnr_schedule_fn(0.)
  if grid == 'logsnr_uniform':
    return cleanest + frac * (noisiest - cleanest)
  if grid == 'karras':
    # sigma^(1/rho) = exp(-logsnr / (2 rho)) is uniform in j / N.
    root_min = jnp.exp(-cleanest / (2. * KARRAS_RHO))
    root_max = jnp.exp(-noisiest / (2. * KARRAS_RHO))
    return -2. * KARRAS_RHO * jnp.log(root_min + frac * (root_max - root_min))
  raise ValueError(f'unknown grid {grid!r}')
