"""Denoising losses for base training and for progressive distillation.

The loss is a weighted regression onto a target x. In base training the target
is the data; in distillation it is `teacher_target`: the x for which one student
DDIM step from z_t lands where two teacher DDIM steps land (paper Algorithm 2).
"""

from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp

from diffusion_distillation.config.choices import WEIGHT_TYPES
from diffusion_distillation.diffusion import process

# model_fn(z, logsnr) -> raw network output (interpreted by `mean_type`).
ModelFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


def meanflat(x):
  """Mean over all axes but the first (per-example)."""
  return x.mean(axis=tuple(range(1, x.ndim)))


def weighted_mse(pred: process.Prediction, x_target, z, logsnr,
                 weight_type: str):
  """Per-example loss of `pred` against `x_target` under a weighting.

  'constant' is x-MSE; 'snr' is eps-MSE (= SNR * x-MSE); 'snr_trunc' is
  max(SNR, 1) * x-MSE, the paper's "truncated SNR" weighting; 'v_mse' is
  v-MSE (= (1 + SNR) * x-MSE). eps and v targets are those implied by z.
  """
  if weight_type == 'constant':
    return meanflat(jnp.square(pred.x - x_target))
  eps_target = process.eps_from_x(z, x_target, logsnr)
  if weight_type == 'snr':
    return meanflat(jnp.square(pred.eps - eps_target))
  if weight_type == 'snr_trunc':
    return jnp.maximum(meanflat(jnp.square(pred.x - x_target)),
                       meanflat(jnp.square(pred.eps - eps_target)))
  if weight_type == 'v_mse':
    v_target = process.v_from_x_eps(x_target, eps_target, logsnr)
    return meanflat(jnp.square(pred.v - v_target))
  raise ValueError(
      f'unknown mean_loss_weight_type {weight_type!r}; known: {WEIGHT_TYPES}')


def sample_times(rng, batch_size: int, num_steps: Union[int, jnp.ndarray]):
  """Training times: uniform in (0, 1], or on the grid {1/N, ..., 1}.

  Returns (u, i) with u = (i + 1) / N in discrete time; i is None in
  continuous time (num_steps == 0, which must be a Python int then).
  `num_steps` may be a traced integer so that distillation stages, which halve
  it, reuse one compiled program.
  """
  shape = (batch_size,)
  if isinstance(num_steps, int) and num_steps == 0:
    return jax.random.uniform(rng, shape), None
  i = jax.random.randint(rng, shape, minval=0, maxval=num_steps)
  return (i + 1).astype(jnp.float32) / num_steps, i


def draw_noise(rng, x, num_steps: Union[int, jnp.ndarray]) -> dict:
  """The random draws of `diffusion_loss` for a batch `x`: its times `u` and
  grid indices `i` (`sample_times`; `i` is None in continuous time) and the
  noise `eps`, from one key."""
  rng_t, rng_eps = jax.random.split(rng)
  u, i = sample_times(rng_t, x.shape[0], num_steps)
  return {'u': u, 'i': i,
          'eps': jax.random.normal(rng_eps, x.shape, dtype=x.dtype)}


def _teacher_step(teacher_fn: ModelFn, z, logsnr, logsnr_next,
                  mean_type: str):
  """(prediction at z, its unclipped DDIM step to logsnr_next).

  As the official training_losses: each DDIM step keeps the teacher's own
  eps prediction (the network output for mean_type 'eps').
  """
  pred = process.interpret_output(teacher_fn(z, logsnr), z, logsnr, mean_type)
  return pred, process.ddim_step(z, pred.x, logsnr, logsnr_next, pred.eps)


def teacher_target(teacher_fn: ModelFn, z_t, u, i, num_steps, *,
                   logsnr_schedule_fn, mean_type: str):
  """The distillation target x for z_t at time u on an N-step student grid.

  Two unclipped teacher DDIM steps t -> t - 0.5/N -> t - 1/N, then the x whose
  single DDIM step from z_t reaches the teacher's z_{t-1/N}. On the last student
  step (i == 0) the student outputs x directly, so the target is the teacher's
  x prediction. Returned under stop_gradient: the teacher is not trained.
  """
  logsnr_t = logsnr_schedule_fn(u)
  logsnr_mid = logsnr_schedule_fn(u - 0.5 / num_steps)
  logsnr_s = logsnr_schedule_fn(u - 1. / num_steps)
  _, z_mid = _teacher_step(teacher_fn, z_t, logsnr_t, logsnr_mid, mean_type)
  pred_2, z_s = _teacher_step(teacher_fn, z_mid, logsnr_mid, logsnr_s,
                              mean_type)
  x_target = process.distillation_target(z_t, z_s, logsnr_t, logsnr_s)
  last = process.broadcast_from_left(i == 0, z_t.shape)
  return jax.lax.stop_gradient(jnp.where(last, pred_2.x, x_target))


def two_step_target(teacher_fn: ModelFn, z_t, u, i, num_steps, *,
                    logsnr_schedule_fn, mean_type: str):
  """The target of a student for the stochastic sampler: a 2/N jump.

  The authors' `dpm.Model.two_nvidia_training_losses` (ddpm_w_distillation):
  two teacher DDIM steps of 1/N each, t -> t - 1/N -> t - 2/N, and the x whose
  single DDIM step from z_t lands on the second; on the last grid step
  (i == 0, t = 1/N) the x whose step lands on the first (at t - 1/N = 0).
  That is the step the stochastic sampler takes before renoising to t - 1/N
  (`sampling.stochastic_step`). (The authors' code evaluates the schedule at
  t - 2/N < 0 there, a NaN that its `where` discards; here that time is
  clamped to 0, the same result without the NaN.)
  """
  logsnr_t = logsnr_schedule_fn(u)
  logsnr_mid = logsnr_schedule_fn(u - 1. / num_steps)
  logsnr_s = logsnr_schedule_fn(jnp.maximum(u - 2. / num_steps, 0.))
  _, z_mid = _teacher_step(teacher_fn, z_t, logsnr_t, logsnr_mid, mean_type)
  _, z_s = _teacher_step(teacher_fn, z_mid, logsnr_mid, logsnr_s, mean_type)
  x_two = process.distillation_target(z_t, z_s, logsnr_t, logsnr_s)
  x_one = process.distillation_target(z_t, z_mid, logsnr_t, logsnr_mid)
  last = process.broadcast_from_left(i == 0, z_t.shape)
  return jax.lax.stop_gradient(jnp.where(last, x_one, x_two))


# How a student's target is made from its teacher (`diffusion_loss`):
# 'progressive' for DDIM students, 'two_step' for the stochastic sampler's.
TARGETS = {'progressive': teacher_target, 'two_step': two_step_target}


def diffusion_loss(model_fn: ModelFn, x, u, i, eps, *, logsnr_schedule_fn,
                   mean_type: str, weight_type: str,
                   num_steps: Union[int, jnp.ndarray] = 0,
                   teacher_fn: Optional[ModelFn] = None,
                   target: str = 'progressive'):
  """Per-example training loss (paper Algorithm 1, or Algorithm 2 with a teacher).

  Args:
    model_fn: the network being trained, `model_fn(z, logsnr) -> output`.
    x: data in [-1, 1], shape (B, H, W, C).
    u, i, eps: the times (B,), their grid indices (B,) or None in continuous
      time, and the noise (B, H, W, C): `draw_noise`'s.
    logsnr_schedule_fn: maps t in [0, 1] to logSNR.
    mean_type: how to read the network output ('x', 'eps', 'v', 'both').
    weight_type: loss weighting, see `weighted_mse`.
    num_steps: 0 for continuous time; N for N discrete student steps.
    teacher_fn: when given, distill: regress onto `teacher_target`.
    target: with `teacher_fn`, which target (`TARGETS`): 'two_step' trains
      a student for the stochastic sampler (`two_step_target`).
  Returns:
    Loss per example, shape (B,).
  """
  logsnr = logsnr_schedule_fn(u)
  z = process.diffuse(x, eps, logsnr)

  if teacher_fn is None:
    x_target = x
  else:
    if i is None:
      raise ValueError('distillation needs a discrete num_steps > 0')
    x_target = TARGETS[target](teacher_fn, z, u, i, num_steps,
                               logsnr_schedule_fn=logsnr_schedule_fn,
                               mean_type=mean_type)

  pred = process.interpret_output(model_fn(z, logsnr), z, logsnr, mean_type)
  return weighted_mse(pred, x_target, z, logsnr, weight_type)
