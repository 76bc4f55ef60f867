"""Classifier-free guidance, guided distillation and the stochastic sampler.

The maths against hand computations, on a tiny guided model with random
parameters (no training): the guided teacher's combination, the stage-one
target, the w input of the students and the stochastic sampler's steps.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_distillation import config as config_lib
from diffusion_distillation import diffusion
from diffusion_distillation.diffusion import guidance
from diffusion_distillation.diffusion import losses
from diffusion_distillation.diffusion import sampling
from diffusion_distillation.diffusion import schedules
from diffusion_distillation.models import diffusion_model as model_lib
from diffusion_distillation.pipeline import stages

from helpers import load_config
from helpers import set_fields
from helpers import TINY_OVERRIDES

pytestmark = pytest.mark.filterwarnings('ignore:the load_module')

SCHEDULE = schedules.get_logsnr_schedule('cosine', logsnr_min=-20.,
                                         logsnr_max=20.)
B = 4


def guided_config(**fields):
  """configs/digits_guided.py with the tiny model (and `fields`)."""
  overrides = dict(TINY_OVERRIDES, **{'guidance.num_updates': 4})
  overrides.update({k.replace('__', '.'): v for k, v in fields.items()})
  return set_fields(load_config('digits_guided'), overrides)


def randomize(params, seed=0):
  """Every parameter random (zero-initialized layers included)."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(tree, [
      0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


@pytest.fixture(scope='module')
def guided():
  """(model, teacher params, random inputs) of the tiny guided config."""
  config = guided_config()
  config_lib.validate_config(config, device_count=1, process_count=1)
  model = model_lib.DiffusionModel.from_config(config, (8, 8, 1), 10)
  params = randomize(model.init_params(jax.random.PRNGKey(0)))
  kz, kl = jax.random.split(jax.random.PRNGKey(1))
  z = jax.random.normal(kz, (B, 8, 8, 1))
  logsnr = jax.random.uniform(kl, (B,), minval=-10., maxval=10.)
  labels = jnp.array([0, 3, 7, 9], jnp.int32)
  return model, params, z, logsnr, labels


def test_guided_teacher_is_the_hand_computed_combination(guided):
  model, params, z, logsnr, labels = guided
  w = jnp.array([0., 0.5, 2., 4.])
  net = lambda y: model.network.apply({'params': params}, z, logsnr, y,
                                      train=False)
  cond, uncond = net(labels), net(jnp.full((B,), -1, jnp.int32))
  assert not np.allclose(cond, uncond, atol=1e-3)
  expected = (1 + w[:, None, None, None]) * cond - w[:, None, None,
                                                     None] * uncond
  got = model.bind(params, labels, guidance=w)(z, logsnr)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
  # w = 0 is the conditional model; None too (one evaluation).
  np.testing.assert_allclose(model.bind(params, labels, guidance=0.)(z, logsnr),
                             cond, atol=1e-5)
  np.testing.assert_allclose(model.bind(params, labels)(z, logsnr), cond,
                             atol=1e-5)


@pytest.mark.parametrize('sampler', ['unipc', 'heun:karras'])
def test_a_guided_teacher_samples_with_the_solvers(guided, sampler):
  """The solvers run on the guided prediction: w changes the images."""
  model, params, _, _, labels = guided
  keys = jax.random.split(jax.random.PRNGKey(5), B)
  run = jax.jit(lambda w: model.generate(params, keys, labels, num_steps=3,
                                         sampler=sampler, guidance=w))
  guided_images, conditional = run(2.), run(0.)
  assert guided_images.shape == (B, 8, 8, 1)
  assert np.isfinite(guided_images).all()
  assert not np.allclose(guided_images, conditional, atol=1e-3)


def test_combining_outputs_equals_combining_x_predictions(guided):
  """Weights (1 + w, -w) sum to 1, so any parameterization gives one x_w."""
  model, params, z, logsnr, labels = guided
  w = 1.5
  x_of = lambda out: diffusion.interpret_output(out, z, logsnr,
                                                model.mean_type).x
  net = lambda y: model.network.apply({'params': params}, z, logsnr, y,
                                      train=False)
  x_w = (1 + w) * x_of(net(labels)) - w * x_of(
      net(jnp.full((B,), -1, jnp.int32)))
  got = x_of(model.bind(params, labels, guidance=w)(z, logsnr))
  np.testing.assert_allclose(got, x_w, rtol=1e-4, atol=1e-4)


def test_stage_one_target_is_the_guided_teacher_at_data_noised_z(guided):
  model, params, _, _, labels = guided
  x = jax.random.uniform(jax.random.PRNGKey(5), (B, 8, 8, 1), minval=-1.,
                         maxval=1.)
  rng, w = jax.random.PRNGKey(6), jnp.array([0., 1., 2., 3.])
  teacher_fn = model.bind(params, labels, guidance=w)
  # A student whose prediction is the teacher's exactly has zero loss; one
  # off by d in x has loss mean(d^2) under the 'constant' weighting.
  common = dict(logsnr_schedule_fn=SCHEDULE, mean_type=model.mean_type)
  draws = losses.draw_noise(rng, x, 0)  # continuous time
  u, eps = draws['u'], draws['eps']
  zero = guidance.matching_loss(teacher_fn, teacher_fn, x, u, eps,
                                weight_type='snr_trunc', **common)
  np.testing.assert_allclose(zero, 0., atol=1e-10)
  # Hand computation of z_t and the target.
  logsnr = SCHEDULE(u)
  z = diffusion.diffuse(x, eps, logsnr)
  target = diffusion.interpret_output(teacher_fn(z, logsnr), z, logsnr,
                                      model.mean_type).x
  student_x = lambda zz, ll: diffusion.v_from_x_eps(
      jnp.zeros_like(zz), diffusion.eps_from_x(zz, jnp.zeros_like(zz), ll), ll)
  loss = guidance.matching_loss(student_x, teacher_fn, x, u, eps,
                                weight_type='constant', **common)
  np.testing.assert_allclose(loss, jnp.mean(target ** 2, axis=(1, 2, 3)),
                             rtol=1e-4)


def test_w_warmup_starts_the_student_as_the_conditional_teacher(guided):
  model, params, z, logsnr, labels = guided
  assert {'w_dense0', 'w_dense1'} <= set(params)
  student = model.student()
  fresh = model.init_params(jax.random.PRNGKey(0))
  assert np.any(fresh['w_dense1']['kernel'])  # default init, as the authors'
  # A student initialized from its teacher, at warm-up weight 0: the
  # conditional teacher at every w, whatever its fresh w layers.
  init = dict(params, w_dense0=fresh['w_dense0'], w_dense1=fresh['w_dense1'])
  cond = model.bind(init, labels)(z, logsnr)
  for w in (0., 2., 4.):
    np.testing.assert_allclose(
        student.bind(init, labels, guidance=w, w_warmup=0.)(z, logsnr), cond,
        atol=1e-5)
  # Warmed up, the output depends on w.
  out = [student.bind(params, labels, guidance=w)(z, logsnr) for w in (0., 4.)]
  assert np.abs(out[0] - out[1]).max() > 1e-2
  with pytest.raises(ValueError, match='guidance'):
    student.bind(params, labels)


def test_warmup_ramps_linearly_to_one():
  assert guidance.warmup(None, 100) == 1. and guidance.warmup(5, 0) == 1.
  np.testing.assert_allclose(
      [guidance.warmup(s, 100) for s in (0, 25, 100, 1000)],
      [0., .25, 1., 1.])


def test_unguided_configs_keep_their_parameter_tree():
  config = load_config('digits')
  config.dataset.args.class_conditional = True
  model = model_lib.DiffusionModel.from_config(config, (8, 8, 1), 10)
  params = jax.eval_shape(model.init_params, jax.random.PRNGKey(0))
  assert params['class_emb']['kernel'].shape == (10, 128)
  assert not any(name.startswith('w_dense') for name in params)
  # Label dropout adds one "no class" row, guided distillation the w layers.
  config.model.cond_drop_prob = 0.1
  model = model_lib.DiffusionModel.from_config(config, (8, 8, 1), 10)
  params = jax.eval_shape(model.init_params, jax.random.PRNGKey(0))
  assert params['class_emb']['kernel'].shape == (11, 128)
  assert not any(name.startswith('w_dense') for name in params)


def test_label_dropout_and_w_draws():
  labels = jnp.arange(20000, dtype=jnp.int32) % 10
  dropped = guidance.drop_labels(
      labels, guidance.draw_label_drops(jax.random.PRNGKey(0), labels, 0.1),
      -1)
  changed = dropped != labels
  assert np.all(np.asarray(dropped)[np.asarray(changed)] == -1)
  assert 0.09 < float(changed.mean()) < 0.11
  w = guidance.sample_w(jax.random.PRNGKey(1), 20000, 0.5, 4.)
  assert 0.5 < float(w.min()) and float(w.max()) <= 4.
  assert abs(float(w.mean()) - 2.25) < 0.05
  # The authors' 'uniform' schedule of u ~ U[0, 1): w = w_min u + w_max (1-u).
  u = jax.random.uniform(jax.random.PRNGKey(1), (20000,))
  np.testing.assert_allclose(w, 0.5 * u + 4. * (1. - u), rtol=1e-6)


def test_guided_stage_losses_run_and_stage_one_is_planned(guided):
  model, params, _, _, labels = guided
  config = guided_config()
  plan = stages.plan_stages(config)
  assert [s.name for s in plan] == ['base', 'guided_8', 'distill_4',
                                    'distill_2', 'distill_1']
  assert [s.objective for s in plan] == [
      'guided_teacher', 'guided_stage_one'] + ['guided_progressive'] * 3
  assert plan[1].num_updates == 4 and plan[1].num_sample_steps == 8
  # Sample grids: at the largest evaluated w; students need some w.
  assert [stages.grid_guidance(config, s) for s in plan[:2]] == [2., 2.]
  config.eval.guidance = ()
  assert [stages.grid_guidance(config, s) for s in plan[:2]] == [None, 0.]
  batch = {'image': jnp.full((B, 8, 8, 1), 128.), 'label': labels}
  for stage in plan:
    objective = stage.objective_for(model)
    draws = objective.draw(jax.random.PRNGKey(0), batch, 4)
    loss = objective.loss(params, params, batch, draws, num_steps=4)
    assert loss.shape == (B,) and np.all(np.isfinite(loss))


def test_check_w_names_the_range():
  with pytest.raises(guidance.GuidanceError, match=r'\[0, 4\]'):
    guidance.check_w(4.5, (0., 4.), 'the students')
  with pytest.raises(guidance.GuidanceError, match='cannot be guided'):
    guidance.check_w(1., None, 'the teacher', 'no label dropout')
  with pytest.raises(guidance.GuidanceError, match='finite'):
    guidance.check_w(float('nan'), (0., 4.), 'the students')
  guidance.check_w(4., (0., 4.), 'the students')


@pytest.mark.parametrize('field,value', [
    ('guidance.w_max', -1.), ('guidance.w_min', 5.),
    ('guidance.num_updates', 0), ('model.cond_drop_prob', 1.),
    ('guidance.w_const', 4.5),
    ('eval.guidance', (0., 9.)), ('dataset.args.class_conditional', False)])
def test_bad_guided_configs_name_the_field(field, value):
  config = guided_config(**{field: value})
  with pytest.raises(config_lib.ConfigError, match=field.split('.')[0]):
    config_lib.validate_config(config, device_count=1, process_count=1)


def test_renoise_draws_the_forward_marginal():
  """z_u ~ q(z_u | x) renoised to s gives z_s ~ q(z_s | x): std sigma_s."""
  lu, ls = jnp.float32(2.), jnp.float32(-1.)
  x = jnp.full((20000, 1, 1, 1), 0.5)
  e1, e2 = jax.random.normal(jax.random.PRNGKey(0), (2, *x.shape))
  z_s = sampling.renoise(diffusion.diffuse(x, e1, lu), lu, ls, e2)
  alpha_s, sigma_s = diffusion.alpha_sigma(ls)
  np.testing.assert_allclose(z_s.mean(), alpha_s * 0.5, atol=0.02)
  np.testing.assert_allclose(z_s.std(), sigma_s, rtol=0.02)


def _hand_stochastic(model_fn, z, num_steps, rng):
  """The stochastic sampler written out: t -> t - 2/N (DDIM) -> t - 1/N."""
  for i in reversed(range(num_steps)):
    t, u, s = (i + 1) / num_steps, (i - 1) / num_steps, i / num_steps
    lt, lu, ls = (jnp.full((z.shape[0],), SCHEDULE(jnp.float32(v)))
                  for v in (t, max(u, 0.), s))
    x = jnp.clip(model_fn(z, lt), -1., 1.)
    if i == 0:
      return x
    alpha_t, sigma_t = diffusion.alpha_sigma(lt[:, None, None, None])
    alpha_u, sigma_u = diffusion.alpha_sigma(lu[:, None, None, None])
    alpha_s, sigma_s = diffusion.alpha_sigma(ls[:, None, None, None])
    eps = (z - alpha_t * x) / sigma_t
    z_u = alpha_u * x + sigma_u * eps
    ratio = alpha_s / alpha_u
    noise = jnp.stack([jax.random.normal(jax.random.fold_in(key, i),
                                         z.shape[1:]) for key in rng])
    z = ratio * z_u + jnp.sqrt(sigma_s ** 2 - ratio ** 2 * sigma_u ** 2) * noise


@pytest.mark.parametrize('num_steps', [1, 2, 4])
def test_stochastic_sampler_matches_the_hand_computation(num_steps):
  model_fn = lambda z, logsnr: jnp.tanh(z) * 0.9
  z = jax.random.normal(jax.random.PRNGKey(2), (2, 2, 2, 1))
  rng = jax.random.split(jax.random.PRNGKey(3), 2)  # a key per image
  got = sampling.sample_loop(model_fn, z, num_steps=num_steps,
                             logsnr_schedule_fn=SCHEDULE, mean_type='x',
                             sampler='stochastic', rng=rng)
  np.testing.assert_allclose(got, _hand_stochastic(model_fn, z, num_steps,
                                                   rng), atol=2e-4)
  if num_steps == 1:  # one step: the model's x, like DDIM
    np.testing.assert_allclose(got, jnp.tanh(z) * 0.9, atol=1e-6)


def test_stochastic_step_lands_on_the_renoised_ddim_jump():
  """One step from t = 1 of a 4-step grid: DDIM to 0.5, renoise to 0.75."""
  z = jax.random.normal(jax.random.PRNGKey(4), (1, 2, 2, 1))
  x, noise = 0.3 * jnp.ones_like(z), jax.random.normal(
      jax.random.PRNGKey(5), z.shape)
  lt, lu, ls = SCHEDULE(1.), SCHEDULE(0.5), SCHEDULE(0.75)
  got = sampling.stochastic_step(z, x, lt, lu, ls, noise)
  z_u = diffusion.ddim_step(z, x, lt, lu)
  (a_u, s_u), (a_s, s_s) = diffusion.alpha_sigma(lu), diffusion.alpha_sigma(ls)
  expected = (a_s / a_u) * z_u + jnp.sqrt(
      s_s ** 2 - (a_s / a_u) ** 2 * s_u ** 2) * noise
  np.testing.assert_allclose(got, expected, atol=1e-5)
