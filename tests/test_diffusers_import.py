"""Teachers from a diffusers folder (docs/diffusers.md).

The golden data in tests/data/diffusers/ were made once, outside the project,
by tests/data/diffusers/make_golden.py with diffusers 0.42.1 and torch 2.13.0
(CPU): two tiny random-weight `UNet2DModel`s saved with `save_pretrained`
(ddpm_like: the block types and time embedding of google/ddpm-cifar10-32,
8x8x1 for the digits; adm_like: scale_shift, attention_head_dim heads, class
embeddings, learned variance, cosine betas; export_like: what our
`export --format=diffusers` writes, a learned time embedding table and
ResNet-block resampling), their outputs on fixed inputs and (but for
export_like's table) fractional timesteps, a 10-step DDIM trajectory of diffusers'
`DDIMScheduler` ('trailing' spacing, no clipping, eta 0) and the betas of
each `beta_schedule`. Nothing here imports torch or diffusers.
"""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffusion_distillation as dd
from diffusion_distillation import config as config_lib
from diffusion_distillation.diffusion import sampling
from diffusion_distillation.evaluation import evaluate
from diffusion_distillation.models import diffusers_folder
from diffusion_distillation.models import diffusers_schedule
from diffusion_distillation.models import diffusion_model as model_lib
from diffusion_distillation.models.diffusers_unet import DiffusersUNet
from diffusion_distillation.models.diffusers_unet import unet_settings
from diffusion_distillation.pipeline import loop
from diffusion_distillation.pipeline import workdirs

from helpers import config_path
from helpers import REPO
from helpers import tiny_config

DATA = os.path.join(REPO, 'tests', 'data', 'diffusers')
# name -> (image shape, classes)
FOLDERS = {'ddpm_like': ((8, 8, 1), 1), 'adm_like': ((8, 8, 3), 3)}


def golden(name):
  return np.load(os.path.join(DATA, name, 'golden.npz'))


def imported_model(name, mean_type):
  """The folder's teacher as `main` builds it (clipping off: as the golden
  scheduler), and its parameters."""
  config = config_lib.add_section(
      config_lib.default_config(), 'distillation',
      teacher_checkpoint_path=os.path.join(DATA, name))
  config.model.update(architecture='diffusers', mean_type=mean_type,
                      eval_clip_denoised=False)
  shape, classes = FOLDERS[name]
  model = model_lib.DiffusionModel.from_config(config, shape, classes)
  return model, diffusers_folder.load_params(os.path.join(DATA, name))


@functools.cache
def ddim(name, mean_type):
  """Our DDIM on the imported teacher, compiled once for every step count."""
  model, params = imported_model(name, mean_type)

  def run(z, labels, num_steps):
    return sampling.sample_loop(
        model.bind(params, labels), z, num_steps=num_steps,
        logsnr_schedule_fn=model.logsnr_schedule('eval'),
        mean_type=mean_type, clip_x=False)

  return jax.jit(run)


def labels_of(data, key, n):
  return jnp.asarray(data[key] if key in data else np.zeros(n, np.int32))


@pytest.mark.parametrize('name', [*sorted(FOLDERS), 'export_like'])
def test_the_port_computes_what_diffusers_computes(name):
  data = golden(name)
  unet_config, _ = diffusers_folder.read_configs(os.path.join(DATA, name))
  unet = DiffusersUNet.from_config(unet_config)
  labels = labels_of(data, 'labels', len(data['x']))
  out = jax.jit(unet.apply)({'params': diffusers_folder.load_params(
      os.path.join(DATA, name))}, data['x'], data['timesteps'], labels)
  error = np.abs(out - data['out']).max() / np.abs(data['out']).max()
  assert error < 1e-5


@pytest.mark.parametrize('name,mean_type', [
    ('ddpm_like', 'eps'), ('ddpm_like', 'v'), ('adm_like', 'eps')])
def test_our_ddim_on_the_imported_teacher_is_diffusers_ddim(name, mean_type):
  """10 steps of our DDIM (grid t = i / N) land where DDIMScheduler does,
  with the network's native eps output and converted to v (the students')."""
  data = golden(name)
  trajectory = data['trajectory']
  labels = labels_of(data, 'trajectory_labels', trajectory.shape[1])
  x = ddim(name, mean_type)(jnp.asarray(trajectory[0]), labels, 10)
  error = np.abs(x - trajectory[-1]).max() / np.abs(trajectory[-1]).max()
  assert error < 1e-5


def test_the_v_student_starts_as_the_eps_teacher():
  """The first student (v, the teacher's weights through the conversion)
  samples as the teacher before any update: 2-step DDIM of both."""
  z = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 1))
  labels = jnp.zeros(2, jnp.int32)
  teacher = ddim('ddpm_like', 'eps')(z, labels, 2)
  student = ddim('ddpm_like', 'v')(z, labels, 2)
  error = np.abs(student - teacher).max() / np.abs(teacher).max()
  assert error < 1e-5


def test_betas_and_noise_levels_are_diffusers():
  betas = np.load(os.path.join(DATA, 'betas.npz'))
  for schedule in diffusers_schedule.BETA_SCHEDULES:
    settings = diffusers_schedule.scheduler_settings(
        {'beta_schedule': schedule})
    np.testing.assert_allclose(diffusers_schedule.betas(settings),
                               betas[schedule], rtol=1e-6, atol=1e-8)
  trained = diffusers_schedule.scheduler_settings(
      {'trained_betas': betas['linear'].tolist()})
  np.testing.assert_array_equal(diffusers_schedule.betas(trained),
                                betas['linear'])
  with open(os.path.join(DATA, 'adm_like', 'scheduler',
                         'scheduler_config.json')) as f:
    logsnrs = diffusers_schedule.timestep_logsnrs(
        diffusers_schedule.scheduler_settings(json.load(f)))
  np.testing.assert_allclose(1 / (1 + np.exp(-np.array(logsnrs))),
                             golden('adm_like')['alphas_cumprod'], atol=1e-6)


def test_timestep_k_sits_at_t_k_plus_one_over_T_and_inverts():
  logsnrs = diffusers_schedule.timestep_logsnrs(
      diffusers_schedule.scheduler_settings({}))
  k = np.array([999., 899., 99., 5.5, 0., -1.])
  logsnr = diffusers_schedule.logsnr_at((k + 1) / 1000, logsnrs)
  np.testing.assert_allclose(logsnr[:3], np.array(logsnrs)[[999, 899, 99]],
                             rtol=1e-6)
  np.testing.assert_allclose(
      diffusers_schedule.timestep_at(logsnr, logsnrs), k, atol=1e-3)


@pytest.mark.parametrize('setting,value', [
    ('time_embedding_type', 'fourier'), ('up_block_types', ['SkipUpBlock2D']),
    ('resnet_time_scale_shift', 'spatial'), ('class_embed_type', 'timestep'),
    ('some_new_option', 1)])
def test_a_unet_setting_the_import_cannot_honour_is_named(setting, value):
  with pytest.raises(ValueError, match=f'^{setting}'):
    unet_settings({setting: value})


@pytest.mark.parametrize('setting,value', [
    ('beta_schedule', 'sigmoid'), ('prediction_type', 'flow'),
    ('rescale_betas_zero_snr', True), ('thresholding', True)])
def test_a_scheduler_setting_the_import_cannot_honour_is_named(setting,
                                                               value):
  with pytest.raises(ValueError, match=f'^{setting}'):
    diffusers_schedule.scheduler_settings({setting: value})


def test_weights_saved_with_the_old_attention_names_load():
  params = diffusers_folder.params_from_state_dict({
      'mid_block.attentions.0.query.weight': np.ones((4, 2), np.float32),
      'mid_block.attentions.0.proj_attn.bias': np.zeros(4, np.float32)})
  attention = params['mid_block']['attentions_0']
  assert attention['to_q']['kernel'].shape == (2, 4)
  assert attention['to_out_0']['bias'].shape == (4,)


def test_load_gives_the_teacher_and_refuses_a_student():
  folder = os.path.join(DATA, 'adm_like')
  model = dd.load(os.path.join(folder, 'unet'), num_steps=2,
                  config=config_path('diffusers_distill'))
  assert (model.kind, model.image_shape, model.num_classes) == (
      'teacher', (8, 8, 3), 3)
  with pytest.raises(dd.ModelError, match="model='teacher'"):
    dd.load(folder, model='distilled', config=config_path('diffusers_distill'))


def test_the_config_names_a_folder_that_does_not_fit_the_data():
  config = config_lib.add_section(
      config_lib.default_config(), 'distillation',
      teacher_checkpoint_path=os.path.join(DATA, 'adm_like'))
  config.model.architecture = 'diffusers'
  with pytest.raises(config_lib.ConfigError,
                     match='teacher_checkpoint_path.*in_channels = 3'):
    model_lib.DiffusionModel.from_config(config, (8, 8, 1), 1)


@pytest.mark.heavy
@pytest.mark.slow  # compiling the imported UNet's update: a minute of CPU
def test_main_distills_an_imported_teacher_and_evaluate_scores_it(tmp_path):
  """Two stages (4 -> 2 -> 1 steps) from ddpm_like on the digits, then the
  digits metric of every model: offline, end to end."""
  config = tiny_config(
      train__num_train_steps=0, model__architecture='diffusers',
      distillation__teacher_checkpoint_path=os.path.join(DATA, 'ddpm_like'),
      distillation__start_num_steps=4, distillation__steps_per_iter=2,
      eval__num_samples=12, eval__batch_size=12, eval__samplers=('ddim',))
  workdir = str(tmp_path / 'run')
  summary = loop.run(config, workdir)
  assert [m['stage'] for m in summary] == ['distill_2', 'distill_1']
  assert all(np.isfinite(m['loss']) for m in summary)
  assert workdirs.open_workdir(workdir).student_steps() == [1, 2]
  results = evaluate.run_evaluation(workdir, cache_dir=str(tmp_path / 'c'),
                                    teacher_steps='4', print_table=False)
  rows = {(r['model'], r['steps']): r['digits_fd'] for r in results['rows']}
  assert set(rows) == {('distilled', 1), ('distilled', 2), ('teacher', 4)}
  assert all(np.isfinite(v) for v in rows.values())
