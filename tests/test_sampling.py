"""Sampling loops."""

import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_distillation import diffusion
from diffusion_distillation.config import choices
from diffusion_distillation.diffusion import sampling
from diffusion_distillation.diffusion import schedules
from diffusion_distillation.parallel import sharding

from helpers import PYTHON
from helpers import REPO
from helpers import subprocess_env

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


@pytest.mark.parametrize('sampler', choices.SAMPLERS)
@pytest.mark.parametrize('mean_type', ['x', 'v', 'both'])
def test_point_mass_is_recovered_for_any_step_count(sampler, mean_type):
  z = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 2, 3))
  for num_steps in (1, 2, 3, 8):
    x = sampling.sample_loop(
        _perfect_denoiser(mean_type), z, num_steps=num_steps,
        logsnr_schedule_fn=SCHEDULE, mean_type=mean_type, sampler=sampler,
        rng=jax.random.split(jax.random.PRNGKey(1), 3))
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


_MAP_BATCHES = '''
import jax, numpy as np
from diffusion_distillation.parallel import sharding
mesh = sharding.make_mesh()
calls = []
def fn(k, batch):
  x, y = batch
  calls.append((k, x.shape, len(x.sharding.device_set)))
  return jax.jit(lambda x, y: {'sum': x.sum(axis=1) + y, 'k': y * 0 + k},
                 out_shardings=sharding.replicated(mesh))(x, y)
x = np.arange(14, dtype=np.float32).reshape(7, 2)
y = np.arange(7, dtype=np.float32)
out = sharding.map_batches(fn, (x, y), batch_size=4, mesh=mesh)
assert calls == [(0, (6, 2), 3), (1, (6, 2), 3)], calls
np.testing.assert_array_equal(out['sum'], x.sum(axis=1) + y)
np.testing.assert_array_equal(out['k'], [0] * 6 + [1])
print('ok')
'''


def test_requests_below_the_batch_size_share_a_few_shapes():
  """3, 5, 6, 7, 8 and 9 images at batch size 16 make batches of 4, 8 and
  16 rows (3 compiles of a sampler, not 6); above 64, multiples of 64 (300
  as 320, not 512); every row comes back once."""
  mesh = sharding.make_mesh()
  shapes = []

  def fn(k, batch):
    del k
    shapes.append(len(batch))
    return batch * 2

  for n, batch_size in ((3, 16), (5, 16), (6, 16), (7, 16), (8, 16), (9, 16),
                        (300, 500), (65, 500), (300, 256)):
    x = np.arange(n, dtype=np.float32)
    np.testing.assert_array_equal(
        sharding.map_batches(fn, x, batch_size=batch_size, mesh=mesh), 2 * x)
  assert shapes == [4, 8, 8, 8, 8, 16, 320, 128, 256, 256]


@pytest.mark.heavy  # starts a process
def test_map_batches_pads_to_the_device_count_and_drops_the_padding():
  """Batches of 4 on 3 devices hold 6 (one shape, one compile); 7 rows out."""
  result = subprocess.run([PYTHON, '-c', _MAP_BATCHES], cwd=REPO,
                          env=subprocess_env(num_devices=3),
                          capture_output=True, text=True, timeout=120,
                          check=False)
  assert result.stdout.strip() == 'ok', result.stderr[-2000:]
