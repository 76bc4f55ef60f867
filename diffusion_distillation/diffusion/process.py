"""The Gaussian diffusion process, parameterized by log signal-to-noise ratio.

Everything here is a pure function of `jax.numpy` arrays. `logsnr` arguments have
shape `(B,)` (or are scalars) and broadcast from the left onto `(B, H, W, C)`:

    alpha**2 = sigmoid(logsnr),  sigma**2 = sigmoid(-logsnr),
    z = alpha * x + sigma * eps.

The deterministic DDIM step, its inverse (the progressive-distillation target of
Salimans & Ho, 2022, Appendix G) and the ancestral step are defined here; the
sampling loops are in `sampling.py` and the losses in `losses.py`.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffusion_distillation.config.choices import MEAN_TYPES
from diffusion_distillation.config.choices import variance_fraction


def broadcast_from_left(x, shape):
  """Broadcasts `x` of shape `(B,)` (or `()`) onto `shape` = `(B, ...)`."""
  x = jnp.asarray(x)
  return jnp.broadcast_to(x.reshape(x.shape + (1,) * (len(shape) - x.ndim)),
                          shape)


def alpha_sigma(logsnr):
  """(alpha, sigma) with alpha**2 = sigmoid(logsnr), sigma**2 = sigmoid(-logsnr)."""
  return jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))


@jax.custom_jvp
def log1mexp(x):
  """log(1 - exp(-x)) for x > 0, accurate for both small and large x.

  Maechler (2012): use log(-expm1(-x)) below log 2 and log1p(-exp(-x)) above.
  The custom JVP avoids the NaN gradient that `jnp.where` would otherwise
  propagate from the branch that is not taken.
  """
  return jnp.where(x > jnp.log(2.), jnp.log1p(-jnp.exp(-x)),
                   jnp.log(-jnp.expm1(-x)))


log1mexp.defjvps(lambda t, _, x: t / jnp.expm1(x))


# --- Forward process -----------------------------------------------------------


def diffuse(x, eps, logsnr):
  """A sample of q(z_t | x) given the noise: z = alpha * x + sigma * eps."""
  alpha, sigma = alpha_sigma(broadcast_from_left(logsnr, x.shape))
  return alpha * x + sigma * eps


def forward_dist(x, logsnr):
  """q(z_t | x) as a dict of mean, std, var and logvar."""
  logsnr = broadcast_from_left(logsnr, x.shape)
  return {
      'mean': x * jnp.sqrt(jax.nn.sigmoid(logsnr)),
      'std': jnp.sqrt(jax.nn.sigmoid(-logsnr)),
      'var': jax.nn.sigmoid(-logsnr),
      'logvar': jax.nn.log_sigmoid(-logsnr),
  }


def posterior(x, z_t, logsnr_t, logsnr_s, variance='fixed_large'):
  """q(z_s | z_t, x) for s < t (logsnr_s > logsnr_t).

  `variance` selects the reverse-process variance the way the official code
  does: 'fixed_small' is the true posterior variance (x known exactly),
  'fixed_large' uses sigma_t**2 in place of sigma_s**2, and
  'fixed_medium:<frac>' interpolates the two in log space. Computed in log
  space with `log1mexp` so that values and gradients stay finite for logSNR
  anywhere in [-20, 20].
  """
  logsnr_t = broadcast_from_left(logsnr_t, z_t.shape)
  logsnr_s = broadcast_from_left(logsnr_s, z_t.shape)
  alpha_st = jnp.sqrt((1. + jnp.exp(-logsnr_t)) / (1. + jnp.exp(-logsnr_s)))
  alpha_s = jnp.sqrt(jax.nn.sigmoid(logsnr_s))
  r = jnp.exp(logsnr_t - logsnr_s)  # SNR(t) / SNR(s)
  one_minus_r = -jnp.expm1(logsnr_t - logsnr_s)
  log_one_minus_r = log1mexp(logsnr_s - logsnr_t)
  mean = r * alpha_st * z_t + one_minus_r * alpha_s * x

  small = log_one_minus_r + jax.nn.log_sigmoid(-logsnr_s)
  large = log_one_minus_r + jax.nn.log_sigmoid(-logsnr_t)
  frac = variance_fraction(variance)
  logvar = small if frac == 0 else large if frac == 1 else (
      frac * large + (1. - frac) * small)
  return {'mean': mean, 'std': jnp.exp(0.5 * logvar), 'var': jnp.exp(logvar),
          'logvar': logvar}


# --- Conversions between parameterizations --------------------------------------


def x_from_eps(z, eps, logsnr):
  """x = (z - sigma * eps) / alpha, written to stay accurate at low logSNR.

  Args:
    z: noisy images `(B, H, W, C)`.
    eps: the noise (or its prediction), shaped as `z`.
    logsnr: `(B,)` or a scalar, broadcast from the left.

  Returns:
    The x implied by `z` and `eps`, shaped as `z`.
  """
  logsnr = broadcast_from_left(logsnr, z.shape)
  return jnp.sqrt(1. + jnp.exp(-logsnr)) * (
      z - eps * jax.lax.rsqrt(1. + jnp.exp(logsnr)))


def eps_from_x(z, x, logsnr):
  """eps = (z - alpha * x) / sigma, written to stay accurate at high logSNR.

  Args:
    z: noisy images `(B, H, W, C)`.
    x: the clean images (or their prediction), shaped as `z`.
    logsnr: `(B,)` or a scalar, broadcast from the left.

  Returns:
    The eps implied by `z` and `x`, shaped as `z`.
  """
  logsnr = broadcast_from_left(logsnr, z.shape)
  return jnp.sqrt(1. + jnp.exp(logsnr)) * (
      z - x * jax.lax.rsqrt(1. + jnp.exp(-logsnr)))


def v_from_x_eps(x, eps, logsnr):
  """v = alpha * eps - sigma * x (the 'velocity' of Salimans & Ho, 2022).

  Args:
    x: clean images `(B, H, W, C)`.
    eps: the noise, shaped as `x`.
    logsnr: `(B,)` or a scalar, broadcast from the left.

  Returns:
    v, shaped as `x`: what a `mean_type='v'` network predicts.
  """
  alpha, sigma = alpha_sigma(broadcast_from_left(logsnr, x.shape))
  return alpha * eps - sigma * x


def x_from_v(z, v, logsnr):
  """x = alpha * z - sigma * v.

  Args:
    z: noisy images `(B, H, W, C)`.
    v: the velocity (or its prediction), shaped as `z`.
    logsnr: `(B,)` or a scalar, broadcast from the left.

  Returns:
    The x implied by `z` and `v`, shaped as `z`.
  """
  alpha, sigma = alpha_sigma(broadcast_from_left(logsnr, z.shape))
  return alpha * z - sigma * v


class Prediction(NamedTuple):
  """A denoiser's output in all three parameterizations."""
  x: jnp.ndarray
  eps: jnp.ndarray
  v: jnp.ndarray


def interpret_output(output, z, logsnr, mean_type: str, clip_x: bool = False):
  """Turns a network output into consistent (x, eps, v) predictions.

  mean_type 'eps', 'x' or 'v' reads the output as that quantity; 'both' splits
  the channels into an x and an eps prediction and blends them with weight
  sigmoid(-logsnr) on x (x is trusted at low SNR, eps at high SNR). With
  `clip_x`, x is clipped to [-1, 1] and eps and v are re-derived from it.
  """
  if mean_type == 'eps':
    x = x_from_eps(z, output, logsnr)
  elif mean_type == 'x':
    x = output
  elif mean_type == 'v':
    x = x_from_v(z, output, logsnr)
  elif mean_type == 'both':
    x_direct, eps_direct = jnp.split(output, 2, axis=-1)
    w_x = broadcast_from_left(jax.nn.sigmoid(-logsnr), z.shape)
    x = w_x * x_direct + (1. - w_x) * x_from_eps(z, eps_direct, logsnr)
  else:
    raise ValueError(f'unknown mean_type {mean_type!r}; known: {MEAN_TYPES}')

  if clip_x:
    x = jnp.clip(x, -1., 1.)
  eps = output if mean_type == 'eps' and not clip_x else eps_from_x(z, x, logsnr)
  v = output if mean_type == 'v' and not clip_x else v_from_x_eps(x, eps, logsnr)
  return Prediction(x=x, eps=eps, v=v)


# --- Sampler steps and the distillation target -----------------------------------


def ddim_step(z_t, x_pred, logsnr_t, logsnr_s, eps_pred=None):
  """One deterministic DDIM step from t to s: keep the eps prediction, move x.

  z_s = alpha_s * x_pred + sigma_s * eps_pred. Pass the model's `eps_pred`
  (`Prediction.eps`) as the official `dpm.Model.ddim_step` does: for
  mean_type 'eps' without clipping it is the network output itself, which
  stays exact where re-deriving it from x loses float32 precision (high
  logSNR: eps = (z - alpha x) / sigma divides a cancellation by a tiny
  sigma). Without it, eps_pred = eps_from_x(z_t, x_pred, logsnr_t), the same
  value for every other mean_type and for clipped x.

  Args:
    z_t: the current noisy images `(B, H, W, C)`.
    x_pred: the model's x prediction at t, shaped as `z_t`.
    logsnr_t: logSNR at t, `(B,)` or a scalar.
    logsnr_s: logSNR at the target time s (s < t: a larger logSNR).
    eps_pred: the model's eps prediction at t, if it has one.

  Returns:
    z_s, shaped as `z_t`.
  """
  if eps_pred is None:
    eps_pred = eps_from_x(z_t, x_pred, logsnr_t)
  return diffuse(x_pred, eps_pred, logsnr_s)


def distillation_target(z_t, z_s, logsnr_t, logsnr_s):
  """The x whose single DDIM step from z_t lands exactly on z_s (Appendix G).

  Solving alpha_s x + sigma_s (z_t - alpha_t x) / sigma_t = z_s for x:
      x = (z_s - (sigma_s / sigma_t) z_t) / (alpha_s - (sigma_s / sigma_t) alpha_t),
  with sigma_s / sigma_t = exp((softplus(logsnr_t) - softplus(logsnr_s)) / 2).

  Args:
    z_t: noisy images at t `(B, H, W, C)`.
    z_s: where the teacher's two DDIM steps from z_t landed, at s < t.
    logsnr_t: logSNR at t, `(B,)` or a scalar.
    logsnr_s: logSNR at s.

  Returns:
    The student's regression target x: `ddim_step(z_t, x, logsnr_t,
    logsnr_s)` equals `z_s`.
  """
  logsnr_t = broadcast_from_left(logsnr_t, z_t.shape)
  logsnr_s = broadcast_from_left(logsnr_s, z_t.shape)
  alpha_t, _ = alpha_sigma(logsnr_t)
  alpha_s, _ = alpha_sigma(logsnr_s)
  sigma_frac = jnp.exp(
      0.5 * (jax.nn.softplus(logsnr_t) - jax.nn.softplus(logsnr_s)))
  return (z_s - sigma_frac * z_t) / (alpha_s - sigma_frac * alpha_t)


def ancestral_step(z_t, x_pred, logsnr_t, logsnr_s, noise,
                   variance='fixed_large'):
  """One stochastic ('noisy') step: a draw from q(z_s | z_t, x = x_pred)."""
  dist = posterior(x_pred, z_t, logsnr_t, logsnr_s, variance)
  return dist['mean'] + dist['std'] * noise
