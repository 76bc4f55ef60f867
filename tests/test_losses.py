"""Loss weightings and the distillation target inside the training loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_distillation import diffusion
from diffusion_distillation.diffusion import losses
from diffusion_distillation.diffusion import schedules

SHAPE = (6, 4, 4, 1)
SCHEDULE = schedules.get_logsnr_schedule('cosine', logsnr_min=-20.,
                                         logsnr_max=20.)


def _setup(seed=0):
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1, 1, SHAPE).astype(np.float32)
  eps = rng.normal(size=SHAPE).astype(np.float32)
  logsnr = np.linspace(-4., 4., SHAPE[0]).astype(np.float32)
  z = diffusion.diffuse(x, eps, logsnr)
  x_pred = x + 0.1 * rng.normal(size=SHAPE).astype(np.float32)
  pred = diffusion.interpret_output(x_pred, z, logsnr, 'x')
  x_mse = np.mean(np.square(x_pred - x), axis=(1, 2, 3))
  return x, z, logsnr, pred, x_mse


def test_constant_weight_is_x_mse():
  x, z, logsnr, pred, x_mse = _setup()
  np.testing.assert_allclose(
      losses.weighted_mse(pred, x, z, logsnr, 'constant'), x_mse, rtol=1e-5)


def test_snr_weight_is_snr_weighted_x_mse():
  x, z, logsnr, pred, x_mse = _setup(1)
  np.testing.assert_allclose(
      losses.weighted_mse(pred, x, z, logsnr, 'snr'), np.exp(logsnr) * x_mse,
      rtol=1e-3)


def test_snr_trunc_weight_is_max_snr_one_weighted():
  x, z, logsnr, pred, x_mse = _setup(2)
  np.testing.assert_allclose(
      losses.weighted_mse(pred, x, z, logsnr, 'snr_trunc'),
      np.maximum(np.exp(logsnr), 1.) * x_mse, rtol=1e-3)


def test_v_mse_weight_is_one_plus_snr_weighted():
  x, z, logsnr, pred, x_mse = _setup(3)
  np.testing.assert_allclose(
      losses.weighted_mse(pred, x, z, logsnr, 'v_mse'),
      (1. + np.exp(logsnr)) * x_mse, rtol=1e-3)


def test_unknown_weight_is_rejected():
  x, z, logsnr, pred, _ = _setup()
  with pytest.raises(ValueError, match='mean_loss_weight_type'):
    losses.weighted_mse(pred, x, z, logsnr, 'bogus')


def test_discrete_times_lie_on_the_grid():
  u, i = losses.sample_times(jax.random.PRNGKey(0), 1000, 8)
  np.testing.assert_allclose(u, (np.asarray(i) + 1) / 8)
  assert set(np.asarray(i).tolist()) == set(range(8))
  u, i = losses.sample_times(jax.random.PRNGKey(0), 10, 0)
  assert i is None and np.all((0 <= u) & (u <= 1))


def test_noise_draws_are_the_times_then_the_noise_of_one_key():
  x = jnp.zeros(SHAPE, jnp.float32)
  rng_t, rng_eps = jax.random.split(jax.random.PRNGKey(5))
  draws = losses.draw_noise(jax.random.PRNGKey(5), x, 8)
  u, i = losses.sample_times(rng_t, SHAPE[0], 8)
  np.testing.assert_array_equal(draws['u'], u)
  np.testing.assert_array_equal(draws['i'], i)
  np.testing.assert_array_equal(draws['eps'],
                                jax.random.normal(rng_eps, SHAPE))


def test_perfect_student_has_zero_distillation_loss():
  """A student that already equals two teacher steps gets zero loss."""
  teacher = lambda z, logsnr: jnp.tanh(z + 0.05 * logsnr.reshape(-1, 1, 1, 1))
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, SHAPE), jnp.float32)
  rng = jax.random.PRNGKey(3)
  num_steps = 4

  # The loss's own times and noise build the ideal student.
  draws = losses.draw_noise(rng, x, num_steps)
  u, i, eps = draws['u'], draws['i'], draws['eps']
  z = diffusion.diffuse(x, eps, SCHEDULE(u))
  target = losses.teacher_target(teacher, z, u, i, num_steps,
                                 logsnr_schedule_fn=SCHEDULE, mean_type='x')
  student = lambda z_, logsnr: target
  loss = losses.diffusion_loss(
      student, x, u, i, eps, logsnr_schedule_fn=SCHEDULE, mean_type='x',
      weight_type='snr_trunc', num_steps=num_steps, teacher_fn=teacher)
  np.testing.assert_allclose(loss, 0., atol=1e-8)
  # ... and a different student does not.
  loss = losses.diffusion_loss(
      lambda z_, l: target + 0.1, x, u, i, eps, logsnr_schedule_fn=SCHEDULE,
      mean_type='x', weight_type='snr_trunc', num_steps=num_steps,
      teacher_fn=teacher)
  assert np.all(loss > 1e-3)


def test_teacher_target_at_last_step_is_teacher_x():
  teacher = lambda z, logsnr: 0.5 * z
  z = jnp.ones(SHAPE)
  u = jnp.full((SHAPE[0],), 1. / 4)  # i == 0 on a 4-step grid
  i = jnp.zeros((SHAPE[0],), jnp.int32)
  target = losses.teacher_target(teacher, z, u, i, 4,
                                 logsnr_schedule_fn=SCHEDULE, mean_type='x')
  lt, lm = SCHEDULE(u), SCHEDULE(u - 0.5 / 4)
  z_mid = diffusion.ddim_step(z, 0.5 * z, lt, lm)
  np.testing.assert_allclose(target, 0.5 * z_mid, atol=1e-6)


def test_teacher_target_has_no_gradient():
  teacher = lambda z, logsnr: jnp.tanh(z)
  z = jnp.ones(SHAPE)
  u = jnp.full((SHAPE[0],), 0.5)
  i = jnp.full((SHAPE[0],), 1)
  grad = jax.grad(lambda z_: losses.teacher_target(
      teacher, z_, u, i, 4, logsnr_schedule_fn=SCHEDULE,
      mean_type='x').sum())(z)
  np.testing.assert_array_equal(grad, 0.)
