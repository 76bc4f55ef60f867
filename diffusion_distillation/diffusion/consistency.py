"""Consistency distillation (Song et al., 2023) on the logSNR process.

The paper works in the variance-exploding (VE) picture x_ve = x + sigma eps;
ours is z = alpha x + sigma_vp eps. They are the same process read
differently: x_ve = z / alpha and sigma = sigma_vp / alpha = exp(-logsnr / 2)
(so logsnr = -2 log sigma). Everything here is a pure function of arrays.

The consistency function is the paper's parameterization (its eq. 3 and the
reference's `get_distiller_fn`, openai/consistency_models_cifar10):

    f(x_ve, sigma) = c_skip(sigma) x_ve + c_out(sigma) F(x_ve, sigma),
    c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2),
    c_out = (sigma - sigma_min) sd / sqrt(sigma^2 + sd^2),

so f(x_ve, sigma_min) = x_ve exactly (the boundary condition). The
reference's F is an EDM network, whose denoiser is D = c_skip_edm x_ve +
c_out_edm F with the same formulas at sigma_min = 0. Our networks output an
x prediction (in any `mean_type`) instead, so F is read off it:
F = (x_pred - c_skip_edm x_ve) / c_out_edm. A student that starts from the
teacher's weights is then the teacher's denoiser wherever sigma >> sigma_min,
as the reference's students start from EDM's.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from diffusion_distillation.config.choices import CONSISTENCY_DISTANCES
from diffusion_distillation.config.choices import CONSISTENCY_SOLVERS
from diffusion_distillation.diffusion import process

# The data's standard deviation in EDM's preconditioning (images in [-1, 1]),
# the reference's `model.data_std`.
SIGMA_DATA = 0.5
# The Karras grid's exponent (EDM's rho; the reference's `model.rho`).
RHO = 7.
# iCT's pseudo-Huber constant: c = 0.00054 sqrt(d) for d pixel values (Song &
# Dhariwal, 2023, Sec. 3.3).
HUBER_SCALE = 0.00054

# denoise(x_ve, sigma) -> the teacher's x prediction.
Denoiser = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


def logsnr_of_sigma(sigma):
  """logSNR of the VE noise level sigma: -2 log sigma."""
  return -2. * jnp.log(sigma)


def to_z(x_ve, sigma):
  """Our z of a VE point: z = alpha x_ve, alpha = 1 / sqrt(1 + sigma^2)."""
  return x_ve * process.broadcast_from_left(
      jax.lax.rsqrt(1. + jnp.square(sigma)), x_ve.shape)


def karras_sigma(i, num_points, sigma_min, sigma_max):
  """Point i of the Karras grid of `num_points` (0: sigma_max, last:
  sigma_min), sigma^(1/rho) uniform in i (the reference's training times)."""
  frac = jnp.asarray(i).astype(jnp.float32) / (num_points - 1)
  root_max, root_min = sigma_max**(1. / RHO), sigma_min**(1. / RHO)
  return (root_max + frac * (root_min - root_max))**RHO


def skip_and_out(sigma, sigma_min):
  """(c_skip, c_out) of the consistency function at sigma; sigma_min = 0
  gives EDM's denoiser preconditioning."""
  c_skip = SIGMA_DATA**2 / (jnp.square(sigma - sigma_min) + SIGMA_DATA**2)
  c_out = (sigma - sigma_min) * SIGMA_DATA * jax.lax.rsqrt(
      jnp.square(sigma) + SIGMA_DATA**2)
  return c_skip, c_out


def consistency_output(x_pred, z, logsnr, sigma_min: float):
  """The consistency function f at (z, logsnr) from a network's x prediction.

  f = c_skip x_ve + (c_out / c_out_edm) (x_pred - c_skip_edm x_ve), with
  c_out / c_out_edm = (sigma - sigma_min) / sigma (see the module doc).

  Args:
    x_pred: the network's x prediction at z, `(B, H, W, C)`.
    z: the noisy images, shaped as `x_pred`.
    logsnr: `(B,)`, at or below -2 log sigma_min.
    sigma_min: the VE noise level where f is the identity.

  Returns:
    f(x_ve, sigma), shaped as `z`: equal to x_ve at sigma = sigma_min.
  """
  sigma = jnp.exp(-0.5 * logsnr)
  x_ve = z * process.broadcast_from_left(jnp.sqrt(1. + jnp.exp(-logsnr)),
                                         z.shape)
  c_skip, _ = skip_and_out(sigma, sigma_min)
  c_skip_edm, _ = skip_and_out(sigma, 0.)
  ratio = (sigma - sigma_min) / sigma
  at = lambda c: process.broadcast_from_left(c, z.shape)
  return at(c_skip) * x_ve + at(ratio) * (x_pred - at(c_skip_edm) * x_ve)


def consistency_model_fn(model_fn, mean_type: str, sigma_min: float,
                         clip_x: bool = False):
  """`(z, logsnr) -> f` of a network `model_fn(z, logsnr) -> output` read
  with `mean_type` (`consistency_output`); with `clip_x`, f is clipped to
  [-1, 1] (as a sampler's x prediction)."""

  def f(z, logsnr):
    x_pred = process.interpret_output(model_fn(z, logsnr), z, logsnr,
                                      mean_type).x
    out = consistency_output(x_pred, z, logsnr, sigma_min)
    return jnp.clip(out, -1., 1.) if clip_x else out

  return f


def ode_step(denoise: Denoiser, x_ve, sigma, sigma_next, solver: str):
  """The teacher's step of the probability-flow ODE from sigma to sigma_next.

  'ddim': Euler, x + (sigma_next - sigma) d with d = (x - D(x)) / sigma
  (the DDIM step written in the VE picture: the reference's `euler_solver`);
  'heun': Heun's step, which averages d with the slope at the Euler point
  (the reference's `heun_solver`, its default).
  """
  at = lambda c: process.broadcast_from_left(c, x_ve.shape)
  slope = (x_ve - denoise(x_ve, sigma)) / at(sigma)
  euler = x_ve + at(sigma_next - sigma) * slope
  if solver == 'ddim':
    return euler
  if solver == 'heun':
    slope_next = (euler - denoise(euler, sigma_next)) / at(sigma_next)
    return x_ve + at(0.5 * (sigma_next - sigma)) * (slope + slope_next)
  raise ValueError(f'unknown consistency solver {solver!r}; known: '
                   f'{CONSISTENCY_SOLVERS}')


def distance(a, b, kind: str):
  """Per-example distance between two batches of images.

  'l2': the mean squared difference (the reference's loss_norm 'l2');
  'pseudo_huber': iCT's sqrt(||a - b||^2 + c^2) - c, c = 0.00054 sqrt(d).
  """
  squares = jnp.square(a - b).reshape(a.shape[0], -1)
  if kind == 'l2':
    return squares.mean(axis=-1)
  if kind == 'pseudo_huber':
    c = HUBER_SCALE * squares.shape[-1]**0.5
    return jnp.sqrt(squares.sum(axis=-1) + c**2) - c
  raise ValueError(f'unknown consistency distance {kind!r}; known: '
                   f'{CONSISTENCY_DISTANCES}')


def consistency_loss(student_fn, target_fn, denoise: Denoiser, x, i, eps, *,
                     num_scales: int, sigma_min: float, sigma_max: float,
                     solver: str, distance_kind: str):
  """The consistency-distillation loss per example (paper Algorithm 2).

  Point i of the N-point Karras grid (`num_scales`, i in [0, N - 2]) and its
  less noisy neighbour i + 1: the student's f at x + sigma_i eps against
  the target network's f where the teacher's ODE step from there lands.

  Args:
    student_fn, target_fn: `(z, logsnr) -> f`, the consistency functions of
      the student and of its target network (theta^-).
    denoise: the teacher's `(x_ve, sigma) -> x prediction`.
    x: data in [-1, 1], `(B, H, W, C)`.
    i: grid indices `(B,)`; eps: the noise, shaped as `x`.

  Returns:
    Loss per example, `(B,)`; the target is under stop_gradient.
  """
  sigma = karras_sigma(i, num_scales, sigma_min, sigma_max)
  sigma_next = karras_sigma(i + 1, num_scales, sigma_min, sigma_max)
  x_ve = x + process.broadcast_from_left(sigma, x.shape) * eps
  x_next = jax.lax.stop_gradient(
      ode_step(denoise, x_ve, sigma, sigma_next, solver))
  f = student_fn(to_z(x_ve, sigma), logsnr_of_sigma(sigma))
  f_target = jax.lax.stop_gradient(
      target_fn(to_z(x_next, sigma_next), logsnr_of_sigma(sigma_next)))
  return distance(f, f_target, distance_kind)


def sampling_sigma(j, num_steps, sigma_min: float, sigma_max: float):
  """Noise level of step j of k-step consistency sampling: the first k of
  k + 1 points evenly spaced on the Karras grid (sigma_max, then down
  towards sigma_min, which the last point would be)."""
  return karras_sigma(j, num_steps + 1, sigma_min, sigma_max)


def renoise_to(x, sigma, sigma_min: float, noise):
  """z at noise level sigma from a clean estimate x (paper Algorithm 1):
  x_ve = x + sqrt(sigma^2 - sigma_min^2) noise, then z = alpha x_ve."""
  scale = jnp.sqrt(jnp.maximum(jnp.square(sigma) - sigma_min**2, 0.))
  return to_z(x + process.broadcast_from_left(scale, x.shape) * noise, sigma)


def sample(consistency_fn, z_init, noise_fn, *, num_steps, sigma_min: float,
           sigma_max: float):
  """Multistep consistency sampling (paper Algorithm 1) in `num_steps`
  network evaluations.

  `z_init` (pure noise) is read as z at sigma_max; each later step renoises
  the current estimate to the next time of `sampling_sigma` with
  `noise_fn(j)` and applies f again. `num_steps` may be traced.
  """
  batch = z_init.shape[0]

  def f_at(z, j):
    sigma = sampling_sigma(j, num_steps, sigma_min, sigma_max)
    return consistency_fn(z, jnp.full((batch,), logsnr_of_sigma(sigma)))

  def body(j, x):
    sigma = sampling_sigma(j, num_steps, sigma_min, sigma_max)
    return f_at(renoise_to(x, sigma, sigma_min, noise_fn(j)), j)

  return jax.lax.fori_loop(1, num_steps, body, f_at(z_init, 0))
