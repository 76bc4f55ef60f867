"""Sampling loops: N sampler steps from pure noise to data, as one XLA loop."""

from typing import Optional

import jax
import jax.numpy as jnp

from diffusion_distillation.diffusion import process
from diffusion_distillation.diffusion.losses import ModelFn

SAMPLERS = ('ddim', 'ancestral')


def sample_loop(model_fn: ModelFn, z_init, *, num_steps, logsnr_schedule_fn,
                mean_type: str, sampler: str = 'ddim', clip_x: bool = True,
                variance: str = 'fixed_large',
                rng: Optional[jax.Array] = None):
  """Runs `num_steps` sampler steps on the grid t = i / N, i = N, ..., 1.

  Each step queries the model at t = (i + 1) / N and moves to s = i / N; the
  last step (i = 0) returns the model's x prediction rather than z_0, as in the
  official code. `num_steps` may be traced, so one compiled loop serves every
  step count. 'ddim' is deterministic; 'ancestral' draws from the posterior
  with the given `variance` and needs `rng`.
  """
  if sampler not in SAMPLERS:
    raise ValueError(f'unknown sampler {sampler!r}; known: {SAMPLERS}')
  if sampler == 'ancestral' and rng is None:
    raise ValueError('the ancestral sampler needs an rng')
  batch = z_init.shape[0]

  def body(k, z_t):
    i = num_steps - 1 - k
    logsnr_t = logsnr_schedule_fn((i + 1).astype(jnp.float32) / num_steps)
    logsnr_s = logsnr_schedule_fn(i.astype(jnp.float32) / num_steps)
    logsnr_t = jnp.full((batch,), logsnr_t)
    logsnr_s = jnp.full((batch,), logsnr_s)
    pred = process.interpret_output(model_fn(z_t, logsnr_t), z_t, logsnr_t,
                                    mean_type, clip_x=clip_x)
    if sampler == 'ddim':
      z_s = process.ddim_step(z_t, pred.x, logsnr_t, logsnr_s)
    else:
      noise = jax.random.normal(jax.random.fold_in(rng, i), z_t.shape,
                                z_t.dtype)
      z_s = process.ancestral_step(z_t, pred.x, logsnr_t, logsnr_s, noise,
                                   variance)
    return jnp.where(i == 0, pred.x, z_s)

  return jax.lax.fori_loop(0, num_steps, body, z_init)
