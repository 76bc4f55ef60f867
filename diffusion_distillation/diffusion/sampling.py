"""Sampling loops: N sampler steps from pure noise to data, as one XLA loop."""

from typing import Optional

import jax
import jax.numpy as jnp

from diffusion_distillation.config import choices
from diffusion_distillation.config.choices import NOISY_SAMPLERS
from diffusion_distillation.diffusion import consistency as consistency_lib
from diffusion_distillation.diffusion import grids
from diffusion_distillation.diffusion import process
from diffusion_distillation.diffusion import solvers
from diffusion_distillation.diffusion.losses import ModelFn


def renoise(z_u, logsnr_u, logsnr_s, noise):
  """A draw from q(z_s | z_u) for s noisier than u (logsnr_s < logsnr_u).

  z_s = (alpha_s / alpha_u) z_u + sigma_{s|u} noise, with
  sigma_{s|u}^2 = sigma_s^2 - (alpha_s / alpha_u)^2 sigma_u^2
               = sigma_s^2 (1 - SNR(s) / SNR(u)).
  """
  logsnr_u = process.broadcast_from_left(logsnr_u, z_u.shape)
  logsnr_s = process.broadcast_from_left(logsnr_s, z_u.shape)
  alpha_su = jnp.sqrt(jax.nn.sigmoid(logsnr_s) / jax.nn.sigmoid(logsnr_u))
  var = jax.nn.sigmoid(-logsnr_s) * -jnp.expm1(logsnr_s - logsnr_u)
  return alpha_su * z_u + jnp.sqrt(var) * noise


def stochastic_step(z_t, x_pred, logsnr_t, logsnr_u, logsnr_s, noise):
  """One step t -> s = t - 1/N of the stochastic sampler of Meng et al.

  A deterministic DDIM step of twice the step length, to u = t - 2/N, then
  back up by one step length to s with fresh noise (a draw from
  q(z_s | z_u)). Still one network evaluation per step. ("On Distillation of
  Guided Diffusion Models", arXiv 2210.03142, Sec. 5, N-step stochastic
  sampling, after the stochastic sampler of Karras et al., 2022.)
  """
  z_u = process.ddim_step(z_t, x_pred, logsnr_t, logsnr_u)
  return renoise(z_u, logsnr_u, logsnr_s, noise)


def network_evaluations(sampler: str, num_steps: int,
                        guided_teacher: bool = False) -> int:
  """What `num_steps` steps of `sampler` cost in network evaluations (NFE):
  one per step, Heun's 2N - 1; twice that for a guided teacher
  (conditional and unconditional)."""
  name, _ = choices.split_sampler(sampler)
  nfe = (solvers.network_evaluations(name, num_steps)
         if name in choices.SOLVERS else num_steps)
  return 2 * nfe if guided_teacher else nfe


def sample_loop(model_fn: ModelFn, z_init, *, num_steps, logsnr_schedule_fn,
                mean_type: str, sampler: str = 'ddim', clip_x: bool = True,
                variance: str = 'fixed_large',
                rng: Optional[jax.Array] = None,
                consistency: Optional[tuple] = None):
  """Runs `num_steps` sampler steps from pure noise `z_init` to data.

  `sampler` is `<name>[:<grid>]` (config/choices.py); the grid (grids.py)
  defaults to t = i / N, i = N, ..., 0. Each step queries the model at grid
  point i + 1 and moves to i; for 'ddim', 'ancestral' and 'stochastic' the
  last step (i = 0) returns the model's x prediction rather than z_0, as in
  the official code, and the ODE solvers (solvers.py) return z at t = 0.
  `num_steps` may be traced, so one compiled loop serves every step count.
  'ddim' is deterministic; 'ancestral' draws from the posterior with the
  given `variance`; 'stochastic' (for distilled students) jumps to grid
  point i - 1 and renoises to i (`stochastic_step`). The noisy samplers need
  `rng`: one key per example, [B] (typed) or [B, 2] (raw), so that an
  image's noise depends on its own key only, never on the batch it is in.
  `consistency`: the (sigma_min, sigma_max) of a consistency student, whose
  'ddim' is multistep consistency sampling (`consistency_loop`).
  """
  choices.require(choices.SAMPLER, 'sampler', sampler, ValueError)
  if consistency is not None:
    return consistency_loop(model_fn, z_init, sampler, num_steps=num_steps,
                            mean_type=mean_type, sigmas=consistency,
                            clip_x=clip_x, rng=rng)
  sampler, grid = choices.split_sampler(sampler)
  if sampler in choices.SOLVERS:
    return solvers.solve(model_fn, z_init, num_steps=num_steps,
                         solver=sampler, grid=grid,
                         logsnr_schedule_fn=logsnr_schedule_fn,
                         mean_type=mean_type, clip_x=clip_x)
  if sampler in NOISY_SAMPLERS and rng is None:
    raise ValueError(f'the {sampler} sampler needs an rng')
  batch = z_init.shape[0]

  def logsnr_at(j):
    return jnp.full((batch,), grids.logsnr_at(grid, j, num_steps,
                                              logsnr_schedule_fn))

  def body(k, z_t):
    i = num_steps - 1 - k
    logsnr_t, logsnr_s = logsnr_at(i + 1), logsnr_at(i)
    pred = process.interpret_output(model_fn(z_t, logsnr_t), z_t, logsnr_t,
                                    mean_type, clip_x=clip_x)
    if sampler == 'ddim':
      return jnp.where(i == 0, pred.x,
                       process.ddim_step(z_t, pred.x, logsnr_t, logsnr_s,
                                         pred.eps))
    noise = jax.vmap(lambda key: jax.random.normal(  # pylint: disable=cell-var-from-loop
        jax.random.fold_in(key, i), z_t.shape[1:], z_t.dtype))(rng)
    if sampler == 'ancestral':
      z_s = process.ancestral_step(z_t, pred.x, logsnr_t, logsnr_s, noise,
                                   variance)
    else:  # i >= 1 here whenever the result is used: u = (i - 1) / N >= 0
      z_s = stochastic_step(z_t, pred.x, logsnr_t,
                            logsnr_at(jnp.maximum(i - 1, 0)), logsnr_s, noise)
    return jnp.where(i == 0, pred.x, z_s)

  return jax.lax.fori_loop(0, num_steps, body, z_init)


def consistency_loop(model_fn: ModelFn, z_init, sampler: str, *, num_steps,
                     mean_type: str, sigmas: tuple, clip_x: bool,
                     rng: jax.Array):
  """Multistep consistency sampling (`consistency.sample`) of a consistency
  student's network between `sigmas` = (sigma_min, sigma_max), its only
  sampler (named 'ddim'); the noise of step j of an image is drawn from
  fold_in(its key, j), as the noisy samplers'."""
  if sampler != 'ddim':
    raise ValueError('a consistency student samples with ddim (multistep '
                     f'consistency sampling), not {sampler!r}')
  sigma_min, sigma_max = sigmas
  f = consistency_lib.consistency_model_fn(model_fn, mean_type, sigma_min,
                                           clip_x)

  def noise(j):
    return jax.vmap(lambda key: jax.random.normal(
        jax.random.fold_in(key, j), z_init.shape[1:], z_init.dtype))(rng)

  return consistency_lib.sample(f, z_init, noise, num_steps=num_steps,
                                sigma_min=sigma_min, sigma_max=sigma_max)
