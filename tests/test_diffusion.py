"""The diffusion maths against the paper's formulas and float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_distillation import diffusion
from diffusion_distillation.diffusion import schedules

SHAPE = (5, 4, 4, 3)


def _data(seed=0):
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1, 1, SHAPE).astype(np.float32)
  eps = rng.normal(size=SHAPE).astype(np.float32)
  logsnr = np.linspace(-8., 8., SHAPE[0]).astype(np.float32)
  return x, eps, logsnr


def _alpha_sigma64(logsnr):
  logsnr = np.asarray(logsnr, np.float64).reshape(-1, 1, 1, 1)
  return np.sqrt(1 / (1 + np.exp(-logsnr))), np.sqrt(1 / (1 + np.exp(logsnr)))


def test_cosine_schedule_endpoints_and_monotone():
  fn = schedules.get_logsnr_schedule('cosine', logsnr_min=-20., logsnr_max=20.)
  np.testing.assert_allclose(fn(0.), 20., atol=1e-4)
  np.testing.assert_allclose(fn(1.), -20., rtol=1e-4)  # float32 tan(~pi/2)
  values = np.asarray(fn(jnp.linspace(0., 1., 101)))
  assert np.all(np.diff(values) < 0)
  # Without truncation the cosine schedule is alpha = cos(pi t / 2).
  t = 0.3
  b = np.arctan(np.exp(-0.5 * 20.))
  a = np.arctan(np.exp(-0.5 * -20.)) - b
  np.testing.assert_allclose(fn(t), -2 * np.log(np.tan(a * t + b)), rtol=1e-5)


def test_unknown_schedule_is_rejected():
  with pytest.raises(ValueError, match='linear'):
    schedules.get_logsnr_schedule('linear')


def test_conversions_round_trip():
  x, eps, logsnr = _data()
  z = diffusion.diffuse(x, eps, logsnr)
  alpha, sigma = _alpha_sigma64(logsnr)
  np.testing.assert_allclose(z, alpha * x + sigma * eps, atol=1e-5)
  np.testing.assert_allclose(diffusion.x_from_eps(z, eps, logsnr), x, atol=2e-4)
  np.testing.assert_allclose(diffusion.eps_from_x(z, x, logsnr), eps, atol=2e-4)
  v = diffusion.v_from_x_eps(x, eps, logsnr)
  np.testing.assert_allclose(v, alpha * eps - sigma * x, atol=1e-5)
  np.testing.assert_allclose(diffusion.x_from_v(z, v, logsnr), x, atol=1e-5)


@pytest.mark.parametrize('mean_type', diffusion.MEAN_TYPES)
def test_interpret_output_is_consistent(mean_type):
  x, eps, logsnr = _data(1)
  z = diffusion.diffuse(x, eps, logsnr)
  v = diffusion.v_from_x_eps(x, eps, logsnr)
  output = {'x': x, 'eps': eps, 'v': v,
            'both': np.concatenate([x, eps], axis=-1)}[mean_type]
  pred = diffusion.interpret_output(output, z, logsnr, mean_type)
  np.testing.assert_allclose(pred.x, x, atol=3e-4)
  np.testing.assert_allclose(pred.eps, eps, atol=3e-4)
  np.testing.assert_allclose(pred.v, v, atol=3e-4)


def test_interpret_output_clips_x_and_rederives_eps():
  x, eps, logsnr = _data(2)
  z = diffusion.diffuse(2 * x, eps, logsnr)
  pred = diffusion.interpret_output(2 * x, z, logsnr, 'x', clip_x=True)
  assert float(jnp.abs(pred.x).max()) <= 1.
  np.testing.assert_allclose(pred.eps, diffusion.eps_from_x(z, pred.x, logsnr),
                             atol=1e-6)


def test_ddim_step_with_true_x_reproduces_forward_process():
  x, eps, _ = _data(3)
  logsnr_t = np.full((SHAPE[0],), -1.5, np.float32)
  logsnr_s = np.full((SHAPE[0],), 2.5, np.float32)
  z_t = diffusion.diffuse(x, eps, logsnr_t)
  z_s = diffusion.ddim_step(z_t, x, logsnr_t, logsnr_s)
  np.testing.assert_allclose(z_s, diffusion.diffuse(x, eps, logsnr_s),
                             atol=1e-5)


def test_distillation_target_inverts_ddim_step():
  x, eps, _ = _data(4)
  rng = np.random.default_rng(4)
  logsnr_t = np.linspace(-6., 4., SHAPE[0]).astype(np.float32)
  logsnr_s = logsnr_t + 1.
  z_t = diffusion.diffuse(x, eps, logsnr_t)
  z_s = rng.normal(size=SHAPE).astype(np.float32)  # any target point
  x_target = diffusion.distillation_target(z_t, z_s, logsnr_t, logsnr_s)
  np.testing.assert_allclose(
      diffusion.ddim_step(z_t, x_target, logsnr_t, logsnr_s), z_s, atol=2e-4)


def test_one_student_step_equals_two_teacher_steps():
  """Paper Algorithm 2: the target makes one step match the teacher's two."""
  fn = schedules.get_logsnr_schedule('cosine', logsnr_min=-20., logsnr_max=20.)
  x, eps, _ = _data(5)
  teacher = lambda z, logsnr: jnp.tanh(0.7 * z + 0.1 * logsnr.reshape(-1, 1, 1, 1))
  u = jnp.full((SHAPE[0],), 0.75)
  n = 4
  lt, lm, ls = fn(u), fn(u - 0.5 / n), fn(u - 1. / n)
  z_t = diffusion.diffuse(x, eps, lt)
  z_mid = diffusion.ddim_step(z_t, teacher(z_t, lt), lt, lm)
  z_s = diffusion.ddim_step(z_mid, teacher(z_mid, lm), lm, ls)
  x_target = diffusion.distillation_target(z_t, z_s, lt, ls)
  np.testing.assert_allclose(diffusion.ddim_step(z_t, x_target, lt, ls), z_s,
                             atol=1e-4)


@pytest.mark.parametrize('variance', ['fixed_small', 'fixed_large',
                                      'fixed_medium:0.3'])
def test_posterior_matches_float64(variance):
  x, eps, _ = _data(6)
  logsnr_t = np.linspace(-10., 5., SHAPE[0]).astype(np.float32)
  logsnr_s = logsnr_t + np.linspace(0.01, 3., SHAPE[0]).astype(np.float32)
  z_t = diffusion.diffuse(x, eps, logsnr_t)
  dist = diffusion.posterior(x, z_t, logsnr_t, logsnr_s, variance)

  a_t, s_t = _alpha_sigma64(logsnr_t)
  a_s, s_s = _alpha_sigma64(logsnr_s)
  a_ts = a_t / a_s
  var_ts = s_t**2 - a_ts**2 * s_s**2
  mean = a_ts * s_s**2 / s_t**2 * np.float64(z_t) + a_s * var_ts / s_t**2 * x
  small = var_ts * s_s**2 / s_t**2  # the true posterior variance
  large = var_ts  # sigma_t^2 (1 - SNR_t / SNR_s)
  frac = diffusion.variance_fraction(variance)
  var = np.exp(frac * np.log(large) + (1 - frac) * np.log(small))
  np.testing.assert_allclose(dist['mean'], mean, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(dist['var'], np.broadcast_to(var, SHAPE),
                             rtol=1e-4)


def test_posterior_finite_values_and_gradients_at_extremes():
  x, eps, _ = _data(7)
  logsnr_t = np.array([-20., -20., 19.9, -5., 0.], np.float32)
  logsnr_s = np.array([-19.99, 20., 20., 20., 1e-4], np.float32)
  z_t = diffusion.diffuse(x, eps, logsnr_t)

  def total(lt, ls):
    d = diffusion.posterior(x, z_t, lt, ls, 'fixed_medium:0.5')
    return d['mean'].sum() + d['logvar'].sum() + d['std'].sum()

  value, grads = jax.value_and_grad(total, argnums=(0, 1))(logsnr_t, logsnr_s)
  assert np.isfinite(value)
  assert all(np.all(np.isfinite(g)) for g in grads)


def test_log1mexp_accurate_and_finite_gradient():
  x = np.array([1e-6, 0.1, np.log(2.), 5., 30.], np.float32)
  np.testing.assert_allclose(diffusion.log1mexp(x),
                             np.log(-np.expm1(-x.astype(np.float64))),
                             rtol=1e-5, atol=1e-12)
  grads = jax.vmap(jax.grad(diffusion.log1mexp))(x)
  assert np.all(np.isfinite(grads))


def test_bad_variance_is_rejected():
  with pytest.raises(ValueError, match='fixed_medium'):
    diffusion.variance_fraction('fixed_medium:2')


def test_ancestral_step_is_posterior_sample():
  x, eps, _ = _data(8)
  lt = np.full((SHAPE[0],), 0., np.float32)
  ls = np.full((SHAPE[0],), 1., np.float32)
  z_t = diffusion.diffuse(x, eps, lt)
  noise = np.random.default_rng(8).normal(size=SHAPE).astype(np.float32)
  dist = diffusion.posterior(x, z_t, lt, ls, 'fixed_small')
  np.testing.assert_allclose(
      diffusion.ancestral_step(z_t, x, lt, ls, noise, 'fixed_small'),
      dist['mean'] + dist['std'] * noise, atol=1e-6)
