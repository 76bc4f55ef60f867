"""Consistency distillation: the loss against the reference's, the
parameterization, multistep sampling, the config's refusals, end to end.

The golden losses (tests/data/consistency/golden.npz) were made once by
tests/data/consistency/make_golden.py, which runs the reference's
`get_consistency_loss_fn` (openai/consistency_models_cifar10, jcm/losses.py)
unchanged with current jax on closed-form networks F(in_x, cond_t) =
tanh(a in_x + b cond_t) in EDM's preconditioning; here the same networks
are written in our coordinates (z, logsnr) as x predictions, and our
objective computes the loss from the same data and draws.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffusion_distillation as dd
from diffusion_distillation import config as config_lib
from diffusion_distillation.config.schema import ConfigError
from diffusion_distillation.diffusion import consistency
from diffusion_distillation.objectives.consistency import Consistency
from diffusion_distillation.parallel.microbatches import BatchKey
from diffusion_distillation.pipeline import loop
from diffusion_distillation.pipeline import stages

from helpers import load_config
from helpers import tiny_config

GOLDEN = os.path.join(os.path.dirname(__file__), 'data', 'consistency',
                      'golden.npz')


@dataclasses.dataclass(frozen=True)
class ClosedForm:
  """The golden script's networks as our models: `bind` gives the x
  prediction c_skip_edm x_ve + c_out_edm tanh(a in_x + b cond_t)."""
  mean_type: str = 'x'

  def bind(self, params, labels, *, train=False, dropout=None):
    del labels, train, dropout
    a, b = params

    def x_pred(z, logsnr):
      sigma = jnp.exp(-0.5 * logsnr)[:, None, None, None]
      x_ve = z * jnp.sqrt(1. + sigma**2)
      c_skip, c_out = consistency.skip_and_out(sigma, 0.)
      scale = jnp.sqrt(sigma**2 + consistency.SIGMA_DATA**2)
      return c_skip * x_ve + c_out * jnp.tanh(a * x_ve / scale +
                                             b * 0.25 * jnp.log(sigma))

    return x_pred


@pytest.mark.parametrize('solver,reference', [('heun', 'heun'),
                                              ('ddim', 'euler')])
def test_loss_equals_the_reference_loss(solver, reference):
  golden = dict(np.load(GOLDEN))
  objective = Consistency(
      ClosedForm(), num_scales=int(golden['num_scales']),
      sigma_min=float(golden['sigma_min']),
      sigma_max=float(golden['sigma_max']), solver=solver, distance='l2')
  x = jnp.asarray(golden['x'])
  batch = {'image': (x + 1.) * 127.5, 'label': jnp.zeros(x.shape[0], int)}
  draws = {'i': jnp.asarray(golden['indices']),
           'eps': jnp.asarray(golden['noise']),
           'dropout': BatchKey(jax.random.PRNGKey(0))}
  losses = objective.loss(
      tuple(golden['student']), tuple(golden['teacher']), batch, draws,
      num_steps=1, train=False, target_params=tuple(golden['target']))
  np.testing.assert_allclose(losses, golden[f'loss_{reference}'], rtol=2e-4,
                             atol=1e-7)


def test_the_student_is_the_identity_at_sigma_min():
  z, x_pred = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 8, 8, 1))
  sigma_min = 0.002
  logsnr = jnp.full((4,), consistency.logsnr_of_sigma(sigma_min))
  f = consistency.consistency_output(x_pred, z, logsnr, sigma_min)
  np.testing.assert_allclose(f, z * np.sqrt(1. + sigma_min**2), atol=1e-6)


def test_at_initialisation_the_student_is_its_teachers_x_prediction():
  """The student starts as its teacher's copy: away from sigma_min its f is
  the teacher's x prediction up to O(sigma_min / sigma), measured here on
  the golden's closed-form teacher at sigma 0.1 ... 80."""
  golden = dict(np.load(GOLDEN))
  net = ClosedForm().bind(tuple(golden['teacher']), None)
  f_fn = consistency.consistency_model_fn(net, 'x', 0.002)
  x, eps = jnp.asarray(golden['x']), jnp.asarray(golden['noise'])
  gaps = {}
  for sigma in (0.1, 0.5, 2., 10., 80.):
    logsnr = jnp.full((x.shape[0],), consistency.logsnr_of_sigma(sigma))
    z = consistency.to_z(x + sigma * eps, jnp.full((x.shape[0],), sigma))
    gaps[sigma] = float(jnp.abs(f_fn(z, logsnr) - net(z, logsnr)).max())
  # Largest near sigma_data (0.5): 0.0025 of a data range of 2.
  assert max(gaps.values()) < 0.005, gaps
  assert max(gaps[2.], gaps[10.], gaps[80.]) < 5e-4, gaps


def test_pseudo_huber_is_icts():
  a, b = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4, 4, 3))
  c = 0.00054 * np.sqrt(48)
  expected = np.sqrt(np.square(a - b).reshape(3, -1).sum(-1) + c**2) - c
  np.testing.assert_allclose(consistency.distance(a, b, 'pseudo_huber'),
                             expected, rtol=1e-5)


def test_k_step_times_are_evenly_spaced_on_the_karras_grid():
  times = [float(consistency.sampling_sigma(j, 2, 0.002, 80.))
           for j in range(2)]
  root = (80.**(1 / 7) + 0.002**(1 / 7)) / 2
  np.testing.assert_allclose(times, [80., root**7], rtol=1e-5)


def _consistency_config(**fields):
  config = tiny_config(distillation__method='consistency')
  return config_lib.add_section(config, 'consistency', **fields)


@pytest.mark.parametrize('fields,expected', [
    (dict(distance='lpips'), "config.consistency.distance: 'lpips' is not "
     "available: it needs LPIPS's VGG weights"),
    (dict(distance='l1'), 'config.consistency.distance: must be one of'),
    (dict(solver='euler'), 'config.consistency.solver: must be one of'),
    (dict(num_scales=1), 'config.consistency.num_scales: must be int >= 2'),
    (dict(sigma_min=80.), 'config.consistency.sigma_min: must be below'),
    (dict(sigma_max=1e6), 'config.consistency.sigma_max: 1000000.0 is logSNR'),
    (dict(target_ema=1.), 'config.consistency.target_ema: must be'),
    (dict(eval_steps=()), 'config.consistency.eval_steps: needs at least'),
])
def test_bad_consistency_settings_are_refused_in_one_line(fields, expected):
  config = _consistency_config(**fields)
  before = config.to_dict()
  with pytest.raises(ConfigError) as error:
    config_lib.validate_config(config, device_count=1, process_count=1)
  assert str(error.value).startswith(expected), str(error.value)
  assert '\n' not in str(error.value)
  assert config.to_dict() == before


def test_the_section_and_the_method_go_together():
  config = tiny_config(distillation__method='consistency')
  with pytest.raises(ConfigError, match='distillation.method: .consistency. '
                     'needs a consistency section'):
    config_lib.validate_config(config, device_count=1, process_count=1)
  config = config_lib.add_section(tiny_config(), 'consistency')
  with pytest.raises(ConfigError, match="config.consistency: is read only "
                     "with distillation.method = 'consistency'"):
    config_lib.validate_config(config, device_count=1, process_count=1)


def test_one_consistency_stage_after_the_teacher():
  plan = stages.plan_stages(_consistency_config(num_updates=7))
  assert [(s.name, s.num_updates, s.objective) for s in plan] == [
      ('base', 4, 'teacher'), ('consistency', 7, 'consistency')]
  assert plan[1].any_steps and plan[1].settings == 'consistency'


def test_digits_consistency_trains_the_digits_teacher():
  """Same seed, data, model and training fields: the same teacher."""
  digits = load_config('digits').to_dict()
  cd = load_config('digits_consistency').to_dict()
  for section in ('seed', 'dataset', 'model', 'train'):
    assert cd[section] == digits[section], section
  assert stages.plan_stages(load_config('digits_consistency'))[0] == (
      stages.plan_stages(load_config('digits'))[0])


@pytest.mark.heavy  # trains and samples
def test_main_then_sampling_in_one_and_two_steps(tmp_path, finished_workdir):
  """Distills the suite's tiny teacher (`finished_workdir`), then samples."""
  config = _consistency_config(num_updates=2, num_scales=4, ema_decay=0.5,
                               target_ema=0.5)
  config.distillation.teacher_checkpoint_path = str(finished_workdir[0])
  summary = loop.run(config, tmp_path)
  assert [m['stage'] for m in summary] == ['consistency']
  assert np.isfinite(summary[0]['loss'])
  assert dd.student_steps(str(tmp_path)) == [1, 2, 4]
  for k in (1, 2):
    images = dd.load(str(tmp_path), num_steps=k).sample(2, num_steps=k)
    assert images.shape == (2, 8, 8, 1)
  with pytest.raises(dd.ModelError, match="consistency student samples with "
                     "sampler='ddim'"):
    dd.load(str(tmp_path), num_steps=2).sample(2, sampler='stochastic')

