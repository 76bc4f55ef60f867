"""TRACT's target: transitive closure time-distillation (Berthelot et al.).

A phase distills a teacher of T DDIM steps into a student of S steps. The
time axis splits into S segments of R = T / S teacher steps each; the
student learns to jump from any teacher grid time t inside a segment to the
segment's end in one DDIM step. Its target chains one teacher step
t -> t - 1/T and one step of the self-teacher (an EMA of the student) from
there to the segment's end, and inverts that jump to the x of the student's
single step (apple/ml-tract `tc_distill.py`, `train_op`). With R = 2, t at
a segment's start and the self-teacher equal to the teacher, it is
progressive distillation's target (`losses.teacher_target`).

Grid indices: segment k in [0, S) spans (k / S, (k + 1) / S]; offset j in
[0, R) puts t = (k + 1) / S - j / T, so t is uniform on the teacher's grid
{1/T, ..., 1}, as in ml-tract.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from diffusion_distillation.diffusion import process

# model_fn(z, logsnr) -> raw network output (interpreted by `mean_type`).
ModelFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


def draw_segments(rng, batch_size: int, num_steps, teacher_steps: int):
  """Each example's segment `k` in [0, num_steps) and offset `j` in [0, R),
  R = teacher_steps // num_steps, uniform and independent (ml-tract's
  `index` and `semi_index`). `num_steps` may be traced."""
  rng_k, rng_j = jax.random.split(rng)
  k = jax.random.randint(rng_k, (batch_size,), 0, num_steps)
  j = jax.random.randint(rng_j, (batch_size,), 0, teacher_steps // num_steps)
  return k, j


def segment_times(k, j, num_steps, teacher_steps: int):
  """(t, t - 1/T, the segment's end) of segment `k`, offset `j`, as float32.

  Float32 quotients of integers, as PD's times are (`losses.sample_times`,
  `teacher_target`): with R = 2 and j = 0 they are the same floats.
  """
  ratio = teacher_steps // num_steps
  grid = jnp.float32(teacher_steps)
  u = ((k + 1) * ratio - j).astype(jnp.float32) / grid
  return u, u - 1. / grid, u - (ratio - j).astype(jnp.float32) / grid


def _step(fn: ModelFn, z, logsnr, logsnr_next, mean_type: str, clip_x: bool):
  """(prediction at z, its DDIM step to logsnr_next); with `clip_x` the x
  prediction is clipped to [-1, 1] and eps re-derived, as ml-tract's
  `post_xt_x0` does."""
  pred = process.interpret_output(fn(z, logsnr), z, logsnr, mean_type,
                                  clip_x=clip_x)
  return pred, process.ddim_step(z, pred.x, logsnr, logsnr_next, pred.eps)


def tract_target(teacher_fn: ModelFn, self_teacher_fn: ModelFn, z_t, k, j,
                 num_steps, teacher_steps: int, *, logsnr_schedule_fn,
                 mean_type: str, clip_x: bool = True):
  """The x whose one DDIM step from z_t lands at its segment's end.

  Args:
    teacher_fn: the frozen teacher (the previous phase's student).
    self_teacher_fn: the EMA of the student being trained.
    z_t: noisy images at t (`segment_times`), (B, H, W, C).
    k, j: segment and offset of each example (`draw_segments`), (B,).
    num_steps: the student's steps S (may be traced).
    teacher_steps: the teacher's steps T, a multiple of S.
    logsnr_schedule_fn: maps t in [0, 1] to logSNR.
    mean_type: how to read the networks' outputs.
    clip_x: clip both networks' x predictions to [-1, 1] (ml-tract does).
  Returns:
    The regression target x, (B, H, W, C), under stop_gradient. On the last
    teacher step of a segment (j = R - 1) the self-teacher is not used: the
    teacher's step reaches the end. On the last segment (k = 0, ending at
    t = 0) the target is the x prediction of the chain's last step, as our
    sampler's last step outputs x (PD's i == 0 rule; ml-tract's
    `binary_distill.py` too, while its `tc_distill.py` inverts the step to
    logSNR(0) = 20, an x within about 1e-4 of it).
  """
  u, u_mid, u_end = segment_times(k, j, num_steps, teacher_steps)
  logsnr_t, logsnr_mid, logsnr_end = (logsnr_schedule_fn(u),
                                      logsnr_schedule_fn(u_mid),
                                      logsnr_schedule_fn(u_end))
  pred_1, z_mid = _step(teacher_fn, z_t, logsnr_t, logsnr_mid, mean_type,
                        clip_x)
  pred_2, z_end = _step(self_teacher_fn, z_mid, logsnr_mid, logsnr_end,
                        mean_type, clip_x)
  ends = process.broadcast_from_left(j == teacher_steps // num_steps - 1,
                                     z_t.shape)
  z_end = jnp.where(ends, z_mid, z_end)
  x_target = process.distillation_target(z_t, z_end, logsnr_t, logsnr_end)
  last = process.broadcast_from_left(k == 0, z_t.shape)
  x_last = jnp.where(ends, pred_1.x, pred_2.x)
  return jax.lax.stop_gradient(jnp.where(last, x_last, x_target))


def self_teacher_decay(momentum: float) -> Callable:
  """`step -> decay` of the self-teacher: ml-tract's `ModuleEMA`, an EMA of
  momentum `momentum` with its bias correction: after update step + 1 the
  new parameters weigh (1 - m) / (1 - m ** (step + 1)), so the first update
  copies them."""

  def decay(step):
    count = jnp.asarray(step, jnp.float32) + 1.
    return 1. - (1. - momentum) / (1. - momentum ** count)

  return decay
