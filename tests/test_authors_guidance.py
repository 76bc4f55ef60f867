"""The guided path against the authors' google-research ddpm_w_distillation.

NumPy transcriptions of their formulas, in float64: `w_unet3.UNet`'s
embeddings (w through `w_input_type`, warm-up, the label shift of
`extra_class`), `dpm.Model.two_nvidia_training_losses` and
`dpm.Model.new_two_nvidia_step`, against ours; and our guided students'
parameter trees against `w_unet3.UNet`'s for the authors' stage-one configs.
tests/data/w_unet3_*.tsv list every leaf (path, shape) of the authors'
model, written once by `jax.eval_shape` of their `w_unet3.UNet` with the
model arguments of config/i64_condw_stage1_distill.py and
cifar_condw_stage1_distill.py (num_classes 1000 / 10, out_ch 3,
extra_class=True).
"""

import math
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_distillation.diffusion import losses
from diffusion_distillation.diffusion import sampling
from diffusion_distillation.diffusion import schedules
from diffusion_distillation.models import diffusion_model as model_lib
from diffusion_distillation.models import unet as unet_lib

from helpers import load_config

pytestmark = pytest.mark.filterwarnings('ignore:the load_module')

DATA = os.path.join(os.path.dirname(__file__), 'data')
SCHEDULE = schedules.get_logsnr_schedule('cosine', logsnr_min=-20.,
                                         logsnr_max=20.)


# --- The authors' formulas, in NumPy ---------------------------------------


def np_sigmoid(x):
  return 1. / (1. + np.exp(-x))


def np_swish(x):
  return x * np_sigmoid(x)


def np_dense(p, x):
  return x @ np.asarray(p['kernel'], np.float64) + np.asarray(p['bias'],
                                                              np.float64)


def np_embedding_input(v, input_type, scale_range=(-10., 10.)):
  """w_unet3.UNet: logsnr_input / w_input."""
  if input_type == 'linear':
    return (v - scale_range[0]) / (scale_range[1] - scale_range[0])
  if input_type == 'sigmoid':
    return np_sigmoid(v)
  return np.arctan(np.exp(-0.5 * np.clip(v, -20., 20.))) / (0.5 * np.pi)


def np_sinusoids(t, dim, max_time=1.):
  """w_unet3.get_timestep_embedding / get_w_embedding (even dim)."""
  t = t * (1000. / max_time)
  half = dim // 2
  freqs = np.exp(np.arange(half) * -(np.log(10000) / (half - 1)))
  args = t[:, None] * freqs[None, :]
  return np.concatenate([np.sin(args), np.cos(args)], axis=1)


def np_cosine_logsnr(t, logsnr_min=-20., logsnr_max=20.):
  """schedules.cosine_logsnr_schedule."""
  b = np.arctan(np.exp(-0.5 * logsnr_max))
  a = np.arctan(np.exp(-0.5 * logsnr_min)) - b
  return -2. * np.log(np.tan(a * t + b))


def np_alpha_sigma(logsnr):
  logsnr = np.asarray(logsnr)[..., None, None, None] if np.ndim(
      logsnr) == 1 else logsnr
  return np.sqrt(np_sigmoid(logsnr)), np.sqrt(np_sigmoid(-logsnr))


def np_run_model(fn, z, logsnr, clip_x=False):
  """dpm.Model._run_model for mean_type 'v': (model_x, model_eps, model_v)."""
  v = np.asarray(fn(jnp.float32(z), jnp.float32(logsnr)), np.float64)
  lb = logsnr[:, None, None, None]
  alpha, sigma = np.sqrt(np_sigmoid(lb)), np.sqrt(np_sigmoid(-lb))
  x = alpha * z - sigma * v  # predict_x_from_v
  if clip_x:
    x = np.clip(x, -1., 1.)
  eps = np.sqrt(1. + np.exp(lb)) * (z - x / np.sqrt(1. + np.exp(-lb)))
  if clip_x:
    v = alpha * eps - sigma * x  # predict_v_from_x_and_eps
  return x, eps, v


def np_x_target(z_to, z, logsnr, logsnr_to):
  """The x whose DDIM step from z at logsnr lands on z_to (dpm.py)."""
  a_t, _ = np_alpha_sigma(logsnr)
  a_s, _ = np_alpha_sigma(logsnr_to)
  frac = np.exp(0.5 * (np.logaddexp(0., logsnr) - np.logaddexp(0., logsnr_to)))
  frac = frac[:, None, None, None]
  return (z_to - frac * z) / (a_s - frac * a_t)


def np_two_nvidia_loss(student_fn, teacher_fn, x, t, eps, num_steps):
  """dpm.Model.two_nvidia_training_losses, mean_type 'v', 'snr_trunc'."""
  bc = lambda a: a[:, None, None, None]
  u = (t + 1.) / num_steps
  logsnr = np_cosine_logsnr(u)
  alpha, sigma = np_alpha_sigma(logsnr)
  z = alpha * x + sigma * eps
  x_pred, eps_pred, _ = np_run_model(teacher_fn, z, logsnr)
  logsnr_mid = np_cosine_logsnr(u - 1. / num_steps)
  a_mid, s_mid = np_alpha_sigma(logsnr_mid)
  z_mid = a_mid * x_pred + s_mid * eps_pred
  x_target_init = np_x_target(z_mid, z, logsnr, logsnr_mid)
  eps_target_init = np.sqrt(1. + np.exp(bc(logsnr))) * (
      z - x_target_init / np.sqrt(1. + np.exp(-bc(logsnr))))
  x_pred, eps_pred, _ = np_run_model(teacher_fn, z_mid, logsnr_mid)
  with np.errstate(invalid='ignore'):  # t - 2/N < 0: NaN, discarded below
    logsnr_s = np_cosine_logsnr(u - 2. / num_steps)
    a_s, s_s = np_alpha_sigma(logsnr_s)
    z_teacher = a_s * x_pred + s_s * eps_pred
    x_target = np_x_target(z_teacher, z, logsnr, logsnr_s)
  x_target = np.where(bc(t == 0), x_pred, x_target)
  eps_target = np.sqrt(1. + np.exp(bc(logsnr))) * (
      z - x_target / np.sqrt(1. + np.exp(-bc(logsnr))))
  two = bc(u >= 2. / num_steps)
  x_target = np.where(two, x_target, x_target_init)
  eps_target = np.where(two, eps_target, eps_target_init)
  model_x, model_eps, _ = np_run_model(student_fn, z, logsnr)
  x_mse = np.mean((model_x - x_target) ** 2, axis=(1, 2, 3))
  eps_mse = np.mean((model_eps - eps_target) ** 2, axis=(1, 2, 3))
  return np.maximum(x_mse, eps_mse), x_target


def np_new_two_nvidia_sampler(fn, z, num_steps, noise):
  """dpm.Model.sample_loop(sampler='new_two_step_nvidia', clip_x=True):
  `new_two_nvidia_step` for i = N - 1, ..., 0 (utils.reverse_fori_loop),
  with `noise[i]` the step's eps_random."""
  batch = z.shape[0]
  full = lambda t: np.full((batch,), np_cosine_logsnr(t))
  for i in reversed(range(num_steps)):
    logsnr_t = full((i + 1.) / num_steps)
    logsnr_s = full(max(i - 1, 0) / num_steps)
    x_pred, eps_pred, _ = np_run_model(fn, z, logsnr_t, clip_x=True)
    a_s, s_s = np_alpha_sigma(logsnr_s)
    z_s = a_s * x_pred + s_s * eps_pred
    logsnr_mid = full(i / num_steps)
    a_mid, s_mid = np_alpha_sigma(logsnr_mid)
    z_noisy = a_mid * z_s / a_s + np.sqrt(np.maximum(
        s_mid ** 2 - (s_s * a_mid / a_s) ** 2, 0.)) * noise[i]
    x2, eps2, _ = np_run_model(fn, z_noisy, logsnr_mid, clip_x=True)
    z = x_pred if i == 0 else a_mid * x2 + s_mid * eps2
  return z


# --- Parameter trees ---------------------------------------------------------


def _tree(params) -> dict:
  flat = flax.traverse_util.flatten_dict(params)
  return {'/'.join(k): tuple(v.shape) for k, v in flat.items()}


def _authors_tree(name) -> dict:
  with open(os.path.join(DATA, name)) as f:
    rows = [line.rstrip('\n').split('\t') for line in f if line.strip()]
  return {path: tuple(int(d) for d in shape.strip('()').split(',') if d)
          for path, shape in rows}


@pytest.mark.parametrize('stage_one,base,data_shape,classes,tsv,count', [
    ('imagenet64_guided_stage_one', 'imagenet64_guided_base', (64, 64, 3),
     1000, 'w_unet3_imagenet64_stage_one.tsv', (634, 296_639_619)),
    ('cifar10_guided_stage_one', 'cifar10_guided_base', (32, 32, 3), 10,
     'w_unet3_cifar10_stage_one.tsv', (460, 61_329_155)),
])
def test_the_students_tree_is_w_unet3s(stage_one, base, data_shape, classes,
                                       tsv, count):
  theirs = _authors_tree(tsv)
  shapes = lambda name: _tree(jax.eval_shape(
      model_lib.DiffusionModel.from_config(
          load_config(name), data_shape, classes).init_params,
      jax.random.PRNGKey(0)))
  ours = shapes(stage_one)
  assert ours == theirs
  assert (len(ours), sum(math.prod(s) for s in ours.values())) == count
  assert ours['class_emb/kernel'][0] == classes + 1  # row 0: no class
  # The guided teacher's is the authors' unet3: the same less the w layers.
  assert shapes(base) == {k: s for k, s in theirs.items()
                          if not k.startswith('w_dense')}


# --- Embeddings -------------------------------------------------------------


def _random_params(tree, seed=0):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(treedef, [0.3 * jax.random.normal(k, x.shape)
                                      for k, x in zip(keys, leaves)])


@pytest.mark.parametrize('w_input_type', unet_lib.LOGSNR_INPUT_TYPES)
@pytest.mark.parametrize('w_warmup', [0., 0.3, 1.])
def test_the_embedding_is_the_authors(w_input_type, w_warmup):
  """What the first ResNet block's temb_proj sees: the logSNR embedding,
  plus w_warmup times the w embedding, plus class_emb's row y + 1."""
  unet = unet_lib.UNet(
      num_classes=10, extra_class=True, out_ch=1, ch=32, emb_ch=64,
      ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), num_heads=1,
      dropout=0., logsnr_input_type='inv_cos', w_input_type=w_input_type)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 1))
  logsnr = jnp.array([-15., -3., 0., 12.])
  y = jnp.array([-1, 0, 4, 9], jnp.int32)  # -1: no class
  w = jnp.array([0., 0.3, 2., 4.])
  params = _random_params(unet.init(jax.random.PRNGKey(0), x, logsnr, y,
                                    train=False, w=w)['params'])

  def temb_proj_input(**kw):
    _, state = unet.apply(
        {'params': params}, x, logsnr, y, train=False, mutable=[
            'intermediates'], capture_intermediates=lambda m, _: (
                m.name == 'temb_proj'), **kw)
    return np.asarray(state['intermediates']['down_0.block_0']['temb_proj'][
        '__call__'][0])

  f64 = lambda a: np.asarray(a, np.float64)
  temb = np_dense(params['dense1'], np_swish(np_dense(
      params['dense0'], np_sinusoids(np_embedding_input(
          f64(logsnr), 'inv_cos'), 32))))
  wemb = np_dense(params['w_dense1'], np_swish(np_dense(
      params['w_dense0'], np_sinusoids(np_embedding_input(
          f64(w), w_input_type), 32))))
  yemb = np_dense(params['class_emb'], np.eye(11)[np.asarray(y) + 1])
  proj = lambda emb: np_dense(params['down_0.block_0']['temb_proj'],
                              np_swish(emb))
  # Values of order 5 after four float32 layers: float32 rounding is
  # ~1e-4; a wrong formula or label moves them by order 1.
  np.testing.assert_allclose(temb_proj_input(w=w, w_warmup=w_warmup),
                             proj(temb + w_warmup * wemb + yemb), atol=1e-3)
  # The guided teacher (no w): the logSNR and class embeddings only.
  np.testing.assert_allclose(temb_proj_input(), proj(temb + yemb), atol=1e-3)


def test_the_default_w_is_the_authors_w_const():
  config = load_config('digits_guided')
  model = model_lib.DiffusionModel.from_config(config, (8, 8, 1), 10)
  assert model.null_label == -1 and model.w_const == 0.3


# --- The nvidia loss and sampler ---------------------------------------------


def _v_fn(scale, shift):
  """A v-prediction 'network' that depends on z and logSNR."""
  return lambda z, logsnr: jnp.tanh(scale * z + shift * jnp.tanh(
      logsnr / 10.)[:, None, None, None])


@pytest.mark.parametrize('num_steps', [1, 2, 4])
def test_two_step_loss_is_the_authors_nvidia_loss(num_steps):
  teacher_fn, student_fn = _v_fn(0.8, 0.5), _v_fn(1.1, -0.3)
  batch = 16
  x = jax.random.uniform(jax.random.PRNGKey(0), (batch, 4, 4, 1), minval=-1.,
                         maxval=1.)
  draws = losses.draw_noise(jax.random.PRNGKey(1), x, num_steps)
  got = losses.diffusion_loss(
      student_fn, x, draws['u'], draws['i'], draws['eps'],
      logsnr_schedule_fn=SCHEDULE, mean_type='v', weight_type='snr_trunc',
      num_steps=num_steps, teacher_fn=teacher_fn, target='two_step')
  t = np.asarray(draws['i'])  # the authors' grid index
  eps = np.asarray(draws['eps'], np.float64)
  expected, x_target = np_two_nvidia_loss(student_fn, teacher_fn,
                                          np.asarray(x, np.float64), t, eps,
                                          num_steps)
  assert set(t) == set(range(num_steps))  # every grid step, t = 0 included
  np.testing.assert_allclose(got, expected, rtol=2e-3, atol=1e-5)
  u = jnp.asarray((t + 1.) / num_steps, jnp.float32)
  alpha, sigma = np_alpha_sigma(np_cosine_logsnr((t + 1.) / num_steps))
  z = jnp.asarray(alpha * np.asarray(x, np.float64) + sigma * eps,
                  jnp.float32)
  np.testing.assert_allclose(
      losses.two_step_target(teacher_fn, z, u, jnp.asarray(t), num_steps,
                             logsnr_schedule_fn=SCHEDULE, mean_type='v'),
      x_target, rtol=1e-3, atol=2e-4)


@pytest.mark.parametrize('num_steps', [1, 2, 4])
def test_the_stochastic_sampler_is_new_two_nvidia_step(num_steps):
  """Ours skips the authors' second network evaluation: it re-expresses
  z_noisy as alpha x + sigma eps of its own prediction, z_noisy again."""
  fn = _v_fn(0.9, 0.4)
  z = jax.random.normal(jax.random.PRNGKey(2), (3, 4, 4, 1))
  keys = jax.random.split(jax.random.PRNGKey(3), 3)  # one per image
  noise = [np.asarray(jax.vmap(lambda k, i=i: jax.random.normal(
      jax.random.fold_in(k, i), z.shape[1:]))(keys), np.float64)
           for i in range(num_steps)]
  got = sampling.sample_loop(fn, z, num_steps=num_steps,
                             logsnr_schedule_fn=SCHEDULE, mean_type='v',
                             sampler='stochastic', clip_x=True, rng=keys)
  expected = np_new_two_nvidia_sampler(fn, np.asarray(z, np.float64),
                                       num_steps, noise)
  np.testing.assert_allclose(got, expected, atol=2e-4)
