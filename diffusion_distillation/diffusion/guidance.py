"""Classifier-free guidance and its distillation: the maths, on arrays.

Classifier-free guidance (Ho & Salimans, 2022) trains one network with and
without the class label (the label is dropped to a "no class" index with
probability p_uncond) and samples with

    x_w = (1 + w) * x_cond - w * x_uncond,

two network evaluations per sampler step. *On Distillation of Guided
Diffusion Models* (Meng, Rombach, Gao, Kingma, Ermon, Ho, Salimans; CVPR
2023; arXiv 2210.03142) removes the second evaluation in two stages. Stage
one (Sec. 4.1) trains a student that takes `w` as an input to match `x_w` at
data-noised z_t, with w ~ U(w_min, w_max] and t ~ U[0, 1], under the usual
weighting of the x error; stage two (Sec. 4.2) is progressive distillation
of that student with w drawn per example and given to teacher and student.

The weights (1 + w) and -w sum to one, so for a fixed z_t the combination is
the same whether it is taken on x, eps, v or the raw network outputs of any
parameterization: `guided_model_fn` combines raw outputs, and clipping (when
sampling) applies to the guided x, as in the paper.
"""

import math

import jax
import jax.numpy as jnp

from diffusion_distillation.diffusion import losses
from diffusion_distillation.diffusion import process
from diffusion_distillation.errors import ModelError


class GuidanceError(ModelError):
  """A guidance strength the model cannot serve (unguided, out of range)."""


def guided_combination(cond, uncond, w):
  """(1 + w) * cond - w * uncond, with w of shape (B,) or a scalar."""
  w = process.broadcast_from_left(jnp.asarray(w, cond.dtype), cond.shape)
  return (1. + w) * cond - w * uncond


def guided_model_fn(apply_fn, labels, null_label: int, w):
  """`model_fn(z, logsnr)` of a guided teacher: two evaluations, one batch.

  `apply_fn(z, logsnr, y)` is the class-conditional network; the
  unconditional prediction is the one for the "no class" label `null_label`.
  Conditional and unconditional inputs run as one batch of 2B.
  """

  def model_fn(z, logsnr):
    both = apply_fn(jnp.concatenate([z, z]), jnp.concatenate([logsnr, logsnr]),
                    jnp.concatenate([labels, jnp.full_like(labels,
                                                           null_label)]))
    cond, uncond = jnp.split(both, 2)
    return guided_combination(cond, uncond, w)

  return model_fn


def draw_label_drops(rng, labels, drop_prob: float):
  """Which labels classifier-free guidance training drops (bool, shape of
  `labels`): each with probability `drop_prob` (p_uncond)."""
  return jax.random.bernoulli(rng, p=drop_prob, shape=labels.shape)


def drop_labels(labels, drops, null_label: int):
  """`labels` with the `drops` (`draw_label_drops`) replaced by `null_label`.

  The label dropout of classifier-free guidance training, which teaches the
  same network the unconditional model.
  """
  return jnp.where(drops, jnp.asarray(null_label, labels.dtype), labels)


def sample_w(rng, batch_size: int, w_min: float, w_max: float):
  """Guidance strengths w ~ U(w_min, w_max], one per example.

  As the authors' training_losses: u ~ U[0, 1) through their 'uniform'
  schedule (`train_w_schedule`), w = w_min u + w_max (1 - u).
  """
  u = jax.random.uniform(rng, (batch_size,), dtype=jnp.float32)
  return w_min * u + w_max * (1. - u)


def warmup(step, warmup_steps: int):
  """The weight of a student's w embedding at update `step` of stage one:
  min(step / warmup_steps, 1), ramping from 0 (the student starts as its
  teacher's conditional model, whatever its fresh w layers output) to 1;
  1 without a warm-up or a step. (The authors' configs set
  `w_warmup_steps`; the code that reads it was not released.)"""
  if step is None or warmup_steps <= 0:
    return 1.
  return jnp.minimum(jnp.asarray(step, jnp.float32) / warmup_steps, 1.)


def check_w(w: float, w_range, what: str, unguided_reason: str = ''):
  """Raises GuidanceError unless `w` is finite and lies in `w_range`.

  `w_range` = (w_min, w_max), or None when `what` was not trained for
  guidance at all (`unguided_reason` says why).
  """
  if not math.isfinite(w):
    raise GuidanceError(f'guidance must be a finite number, got {w}')
  if w_range is None:
    raise GuidanceError(
        f'guidance={w:g}: {what} cannot be guided ({unguided_reason}); '
        'leave the guidance out')
  lo, hi = w_range
  if not lo <= w <= hi:
    raise GuidanceError(
        f'guidance={w:g} is outside the range {what} were trained for, '
        f'[{lo:g}, {hi:g}]')


def matching_loss(student_fn: losses.ModelFn, teacher_fn: losses.ModelFn, x,
                  u, eps, *, logsnr_schedule_fn, mean_type: str,
                  weight_type: str):
  """Stage one of guided distillation: per-example loss, shape (B,).

  z_t = alpha_t x + sigma_t eps at t = u ~ U[0, 1] (data-noised, continuous
  time: `losses.draw_noise(rng, x, 0)`); the target is the guided teacher's
  x prediction at z_t (no sampler step in between), under stop_gradient,
  weighted like the base loss (`losses.weighted_mse`; the paper's
  omega(lambda_t)).
  """
  logsnr = logsnr_schedule_fn(u)
  z = process.diffuse(x, eps, logsnr)
  x_target = jax.lax.stop_gradient(
      process.interpret_output(teacher_fn(z, logsnr), z, logsnr, mean_type).x)
  pred = process.interpret_output(student_fn(z, logsnr), z, logsnr, mean_type)
  return losses.weighted_mse(pred, x_target, z, logsnr, weight_type)
