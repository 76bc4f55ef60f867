"""Sampling loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_distillation import diffusion
from diffusion_distillation.diffusion import sampling
from diffusion_distillation.diffusion import schedules

SCHEDULE = schedules.get_logsnr_schedule('cosine', logsnr_min=-20.,
                                         logsnr_max=20.)
POINT = np.linspace(-0.9, 0.9, 2 * 2 * 3).reshape(1, 2, 2, 3).astype(np.float32)


def _perfect_denoiser(mean_type):
  """The Bayes-optimal denoiser for data that is a single point."""

  def model_fn(z, logsnr):
    x = jnp.broadcast_to(POINT, z.shape)
    eps = diffusion.eps_from_x(z, x, logsnr)
    return {'x': x, 'eps': eps, 'v': diffusion.v_from_x_eps(x, eps, logsnr),
            'both': jnp.concatenate([x, eps], -1)}[mean_type]

  return model_fn


@pytest.mark.parametrize('sampler', sampling.SAMPLERS)
@pytest.mark.parametrize('mean_type', ['x', 'v', 'both'])
def test_point_mass_is_recovered_for_any_step_count(sampler, mean_type):
  z = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 2, 3))
  for num_steps in (1, 2, 3, 8):
    x = sampling.sample_loop(
        _perfect_denoiser(mean_type), z, num_steps=num_steps,
        logsnr_schedule_fn=SCHEDULE, mean_type=mean_type, sampler=sampler,
        rng=jax.random.PRNGKey(1))
    np.testing.assert_allclose(x, np.broadcast_to(POINT, x.shape), atol=1e-4)


def test_traced_step_count_matches_static():
  model_fn = lambda z, logsnr: 0.5 * z
  z = jax.random.normal(jax.random.PRNGKey(0), (2, 2, 2, 3))
  run = lambda n: sampling.sample_loop(model_fn, z, num_steps=n,
                                       logsnr_schedule_fn=SCHEDULE,
                                       mean_type='x')
  np.testing.assert_allclose(jax.jit(run)(jnp.int32(4)), run(4), atol=1e-6)


def test_ddim_loop_equals_manual_steps():
  model_fn = lambda z, logsnr: jnp.tanh(z)
  z = jax.random.normal(jax.random.PRNGKey(2), (2, 2, 2, 3))
  out = sampling.sample_loop(model_fn, z, num_steps=2,
                             logsnr_schedule_fn=SCHEDULE, mean_type='x',
                             clip_x=False)
  l1, lh = jnp.full((2,), SCHEDULE(1.)), jnp.full((2,), SCHEDULE(0.5))
  z_half = diffusion.ddim_step(z, jnp.tanh(z), l1, lh)
  np.testing.assert_allclose(out, jnp.tanh(z_half), atol=1e-6)


def test_bad_sampler_and_missing_rng():
  with pytest.raises(ValueError, match='sampler'):
    sampling.sample_loop(lambda z, l: z, jnp.zeros((1, 2, 2, 1)), num_steps=1,
                         logsnr_schedule_fn=SCHEDULE, mean_type='x',
                         sampler='euler')
  with pytest.raises(ValueError, match='rng'):
    sampling.sample_loop(lambda z, l: z, jnp.zeros((1, 2, 2, 1)), num_steps=1,
                         logsnr_schedule_fn=SCHEDULE, mean_type='x',
                         sampler='ancestral')
