"""TRACT (distillation.method = 'tract'): its target against apple/ml-tract,
its reduction to progressive distillation, its config errors and stages.

golden.npz (tests/data/tract/) holds ml-tract's targets, made once by
tests/data/tract/make_golden.py: it runs the target statements of ml-tract's
`tc_distill.py` `train_op` (torch, float64) and its `ModuleEMA` on the same
closed-form networks and draws that the tests here give ours (JAX, float32).
"""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_distillation import config as config_lib
from diffusion_distillation import objectives
from diffusion_distillation.config.schema import ConfigError
from diffusion_distillation.diffusion import process
from diffusion_distillation.diffusion import schedules
from diffusion_distillation.diffusion import tract
from diffusion_distillation.pipeline import checkpoints
from diffusion_distillation.pipeline import loop
from diffusion_distillation.pipeline import stages
from diffusion_distillation.pipeline import train_state
from diffusion_distillation.pipeline import workdirs

import helpers

GOLDEN = np.load(os.path.join(helpers.REPO, 'tests', 'data', 'tract',
                              'golden.npz'))
SCHEDULE_FN = lambda t: schedules.cosine_logsnr(t, logsnr_min=-20.,
                                                logsnr_max=20.)

pytestmark = pytest.mark.filterwarnings('ignore:the load_module')


def golden_network(name):
  """make_golden.py's closed-form x predictor `name`, in JAX."""
  a, b = GOLDEN[f'net_{name}']
  bias = jnp.asarray(GOLDEN[f'bias_{name}'])
  return lambda z, logsnr: (a * z + b * process.broadcast_from_left(
      jnp.tanh(logsnr / 8), z.shape) + bias)


@pytest.mark.parametrize('phase', [0, 1])
def test_target_is_ml_tracts_on_the_same_networks_and_draws(phase):
  teacher_steps, num_steps = (int(s) for s in GOLDEN['schedule'][phase:
                                                                 phase + 2])
  get = lambda key: GOLDEN[f'phase{phase}_{key}']

  @jax.jit
  def target(k, j, x, eps):
    u, _, _ = tract.segment_times(k, j, num_steps, teacher_steps)
    z = process.diffuse(x, eps, SCHEDULE_FN(u))
    return tract.tract_target(
        golden_network('teacher'), golden_network('self_teacher'), z, k, j,
        num_steps, teacher_steps, logsnr_schedule_fn=SCHEDULE_FN,
        mean_type='x')

  ours = np.asarray(target(get('k'), get('j'), get('x'), get('eps')))
  final = get('k') == 0
  target, x_last = get('target'), get('x_last')
  assert final.any() and (phase == 1 or not final.all())
  # Inside the time axis: ml-tract's inverted chain, at float32 noise.
  np.testing.assert_allclose(ours[~final], target[~final], rtol=1e-4,
                             atol=1e-4)
  # The last segment: the chain's last x (ours; our sampler's last step
  # outputs x), which ml-tract's inversion to logSNR 20 is within 1e-3 of.
  np.testing.assert_allclose(ours[final], x_last[final], rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(target[final], x_last[final], atol=1e-3)


def test_self_teacher_is_ml_tracts_bias_corrected_ema():
  decay = tract.self_teacher_decay(0.5)
  average, values = jnp.zeros(()), []
  for step in range(len(GOLDEN['ema'])):
    average = train_state.follow(average, jnp.float32((step + 1) ** 2),
                                 decay(step))
    values.append(float(average))
  np.testing.assert_allclose(values, GOLDEN['ema'], rtol=1e-6)


class LinearModel:
  """A stand-in for `DiffusionModel` whose network is affine in z and
  tanh(logsnr): what the objectives call of a model, compiled in
  milliseconds."""
  mean_type, weight_type = 'v', 'snr_trunc'

  def logsnr_schedule(self, which):
    assert which == 'train'
    return SCHEDULE_FN

  def bind(self, params, labels, *, train=False, dropout=None):
    del labels, train, dropout
    return lambda z, logsnr: (params['a'] * z + params['b'] * (
        process.broadcast_from_left(jnp.tanh(logsnr / 8), z.shape)))


def linear_params(seed):
  rng = np.random.default_rng(seed)
  return {'a': jnp.asarray(rng.uniform(0.5, 1.5, (8, 8, 1)), jnp.float32),
          'b': jnp.asarray(rng.uniform(-1, 1, (8, 8, 1)), jnp.float32)}


def test_halving_phases_with_the_teacher_as_self_teacher_are_pd():
  """TRACT with R = 2 and t at segment starts (j = 0), unclipped, with its
  self-teacher still the teacher (the first update: the target starts as the
  student's initial parameters, the teacher's): PD's loss and gradient, bit
  for bit, so the same update. (TRACT also draws j = 1, where the target is
  one teacher step, clips, and its self-teacher then moves: docs/methods.md.)"""
  model, teacher, student = LinearModel(), linear_params(0), linear_params(1)
  num_steps, batch_size = 4, 16
  rng = jax.random.PRNGKey(3)
  batch = {'image': np.random.default_rng(0).integers(
      0, 256, (batch_size, 8, 8, 1)), 'label': np.arange(batch_size) % 10}
  pd = objectives.make('progressive', model)
  ours = objectives.make('tract', model, teacher_steps=2 * num_steps,
                         clip_x=False)
  draws = jax.jit(pd.draw, static_argnums=2)(rng, batch, num_steps)
  tract_draws = dict(k=draws['i'], j=jnp.zeros_like(draws['i']),
                     eps=draws['eps'], dropout=draws['dropout'])
  assert set(tract_draws) == set(jax.eval_shape(ours.draw, rng, batch,
                                                num_steps))
  assert int(jnp.min(draws['i'])) == 0  # the last segment is covered

  def value_and_grad(objective, draws):
    return jax.jit(jax.value_and_grad(lambda p: objective.loss(
        p, teacher, batch, draws, num_steps=num_steps, train=False,
        target_params=teacher).mean()))(student)

  want, got = value_and_grad(pd, draws), value_and_grad(ours, tract_draws)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b)  # bit for bit


def tract_config(phases=(4, 1), **fields):
  config = helpers.tiny_config(distillation__method='tract')
  config_lib.add_section(config, 'tract', phases=phases, updates_per_phase=2)
  return helpers.set_fields(config, fields)


def validate(config):
  config_lib.validate_config(config_lib.complete(config), device_count=1,
                             process_count=1)


def test_phases_are_stages_each_distilling_the_one_before():
  planned = stages.plan_stages(tract_config((4, 2, 1)))
  assert [(s.name, s.num_sample_steps, dict(s.options)['teacher_steps'])
          for s in planned[1:]] == [('tract_4', 4, 8), ('tract_2', 2, 4),
                                    ('tract_1', 1, 2)]
  assert {s.objective for s in planned[1:]} == {'tract'}
  validate(tract_config((4, 2, 1)))


@pytest.mark.parametrize('phases, fields, field', [
    ((3, 1), {}, 'tract.phases'),  # 3 does not divide the teacher's 8
    ((4, 8), {}, 'tract.phases'),  # not decreasing
    ((8,), {}, 'tract.phases'),  # not fewer than the teacher's
    ((4, 1), {'distillation.method': 'progressive'}, 'distillation.method'),
    ((), {}, 'tract.phases'),
])
def test_bad_phases_are_one_line_naming_the_field(phases, fields, field):
  config = tract_config(phases, **fields)
  before = config.to_dict()
  with pytest.raises(ConfigError) as error:
    validate(config)
  message = str(error.value)
  assert f'config.{field}:' in message and '\n' not in message, message
  assert config.to_dict() == before


def test_method_tract_needs_its_section():
  config = helpers.tiny_config(distillation__method='tract')
  with pytest.raises(ConfigError, match='config.distillation.method:'):
    validate(config)


@pytest.mark.heavy
def test_phases_train_from_a_teacher_workdir_and_resume_exactly(
    finished_workdir, tmp_path):
  """Two phases (8 -> 4 -> 1) from the tiny pipeline's teacher: each a
  stage with checkpoints, the second resumed from its middle checkpoint
  ends where the uninterrupted run ended."""
  teacher, _ = finished_workdir
  config = tract_config((4, 1), **{
      'distillation.teacher_checkpoint_path': str(teacher),
      'train.num_train_steps': 0, 'tract.updates_per_phase': 4})
  workdir = tmp_path / 'tract'
  loop.run(config, str(workdir))
  finished = workdirs.open_workdir(str(workdir))
  assert finished.student_steps() == [1, 4]
  want = finished.student_params(1)

  resumed = tmp_path / 'resumed'
  shutil.copytree(workdir, resumed)
  shutil.rmtree(checkpoints.stage_dir(resumed, 'tract_1') / '4')
  loop.run(config, str(resumed))  # tract_1 resumes at step 2
  got = workdirs.open_workdir(str(resumed)).student_params(1)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_digits_tract_trains_the_digits_teacher():
  """configs/digits_tract.py differs from configs/digits.py only in its
  students: the same base stage (index, so its random key) and every other
  field the same, so the same teacher."""
  digits, ours = (helpers.load_config(n) for n in ('digits', 'digits_tract'))
  assert stages.plan_stages(ours)[0] == stages.plan_stages(digits)[0]
  digits, ours = digits.to_dict(), ours.to_dict()
  assert ours.pop('tract')['phases'] == (16, 1)
  assert ours.pop('distillation')['method'] == 'tract'
  digits.pop('distillation')
  assert ours['eval'].pop('samplers') == ('ddim',)  # not the teacher's
  digits['eval'].pop('samplers')
  assert ours == digits
