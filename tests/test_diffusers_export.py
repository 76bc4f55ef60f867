"""`export --format=diffusers`: a model as diffusers' UNet2DModel + DDIMScheduler.

The golden (tests/data/diffusers_export/golden.npz) is diffusers' own DDIM
(diffusers 0.42.1, torch 2.13.0, CPU) run on folders our exporter wrote for
three tiny random-weight students (`make_golden.py` beside it says how): here
the exporter writes the same weights and configs again, and our UNet and our
DDIM sampler, from the same initial noise, give diffusers' first network
output and final images. No test imports torch or diffusers.
"""

import functools
import importlib.util
import json
import os
import subprocess

import jax
import numpy as np
import pytest
import safetensors.numpy

import diffusion_distillation as dd
from diffusion_distillation.diffusion import sampling
from diffusion_distillation.errors import ModelError
from diffusion_distillation.models import diffusers_export
from diffusion_distillation.models import diffusers_folder
from diffusion_distillation.models import diffusion_model

from helpers import assert_rejected
from helpers import PYTHON
from helpers import random_params
from helpers import snapshot
from helpers import subprocess_env
from helpers import tiny_config

DATA = os.path.join(os.path.dirname(__file__), 'data', 'diffusers_export')


def _make_golden():
  """make_golden.py (it imports torch only inside its functions): its
  VARIANTS (name: tiny_config overrides, classes, num_steps) and its digest
  of the exported weights, which leaves out the computed timestep table."""
  spec = importlib.util.spec_from_file_location(
      'make_golden', os.path.join(DATA, 'make_golden.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


_GOLDEN_SCRIPT = _make_golden()
VARIANTS = _GOLDEN_SCRIPT.VARIANTS
weights_digest = _GOLDEN_SCRIPT.weights_digest
# Float32 rounding apart (torch and XLA reduce in different orders): the
# measured differences were below 2e-5.
ATOL = 1e-4


def variant(name):
  overrides, classes, steps = VARIANTS[name]
  model = diffusion_model.DiffusionModel.from_config(
      tiny_config(**overrides), (8, 8, 1), classes)
  seed = list(VARIANTS).index(name)
  return model, random_params(model, seed), steps


@pytest.fixture(scope='module')
def golden():
  with np.load(os.path.join(DATA, 'golden.npz')) as f:
    return dict(f)


@pytest.mark.parametrize('name', list(VARIANTS))
def test_diffusers_samples_our_students_images(golden, name):
  model, params, steps = variant(name)
  folder = diffusers_export.folder(model, params, num_steps=steps,
                                   distilled=True)
  # The exporter still writes what diffusers ran.
  state = safetensors.numpy.load(
      folder['unet/diffusion_pytorch_model.safetensors'])
  assert weights_digest(state) == str(golden[f'{name}/weights_digest'])
  configs = {'unet': json.loads(folder['unet/config.json']),
             'scheduler': json.loads(folder['scheduler/scheduler_config.json'])}
  assert configs == json.loads(str(golden[f'{name}/configs']))
  # Its timesteps are our grid i / N: k = T i / N - 1.
  num_timesteps = diffusers_export.num_train_timesteps(steps)
  np.testing.assert_array_equal(
      golden[f'{name}/timesteps'],
      np.arange(steps, 0, -1) * (num_timesteps // steps) - 1)

  first, images = jax.jit(functools.partial(first_output_and_images, model,
                                            num_steps=steps))(
                                                params, golden[f'{name}/noise'],
                                                golden[f'{name}/labels'])
  np.testing.assert_allclose(first, golden[f'{name}/first_output'], atol=ATOL)
  np.testing.assert_allclose(images, golden[f'{name}/images'], atol=ATOL)


def first_output_and_images(model, params, noise, labels, *, num_steps):
  """Our network's output at t = 1 and our DDIM sampler's images, from
  `noise` (one program: compiled once)."""
  schedule = model.logsnr_schedule('eval')
  model_fn = model.bind(params, labels)
  first = model_fn(noise, jax.numpy.full((len(noise),), schedule(1.)))
  return first, sampling.sample_loop(
      model_fn, noise, num_steps=num_steps, logsnr_schedule_fn=schedule,
      mean_type=model.mean_type, clip_x=model.clip_x)


def ddim_alphas(scheduler: dict, num_steps: int):
  """alpha^2 at DDIMScheduler's trailing timesteps for `num_steps` (as it
  computes them: float32 betas and alphas, their running product as torch
  forms it on CPU: in float64, rounded to float32)."""
  num_timesteps = scheduler['num_train_timesteps']
  alphas = 1 - np.asarray(scheduler['trained_betas'], np.float32)
  cumprod = np.cumprod(alphas.astype(np.float64)).astype(np.float32)
  timesteps = np.round(np.arange(num_timesteps, 0,
                                 -num_timesteps / num_steps)).astype(int) - 1
  return cumprod[timesteps]


def test_the_schedulers_steps_are_our_grid():
  overrides, classes, _ = VARIANTS['v_conv']
  model = diffusion_model.DiffusionModel.from_config(
      tiny_config(**overrides), (8, 8, 1), classes)
  schedule = model.logsnr_schedule('eval')
  for num_steps in (1, 4, 16, 128):
    num_timesteps = diffusers_export.num_train_timesteps(num_steps)
    assert num_timesteps % num_steps == 0 and num_timesteps >= 1000
    scheduler = diffusers_export.scheduler_config(model, num_timesteps)
    assert_alphas(ddim_alphas(scheduler, num_steps), schedule(
        np.arange(num_steps, 0, -1, dtype=np.float32) / num_steps))
    # The grid of any step count that divides T (a teacher's 8 steps).
    if num_timesteps % 8 == 0:
      assert_alphas(ddim_alphas(scheduler, 8), schedule(
          np.arange(8, 0, -1, dtype=np.float32) / 8))


def assert_alphas(alphas, logsnr):
  """Within float32 rounding of sigmoid(logsnr) (the logSNR's own float32
  rounding differs by a few ulps between array lengths); at t = 1 (first)
  within 2^-24 of the last factor, below 1/2 (`trained_betas`): measured
  2.5e-5 relative at T = 1008. Neighbouring timesteps differ by > 1e-4."""
  target = 1. / (1. + np.exp(-np.asarray(logsnr, np.float64)))
  np.testing.assert_allclose(alphas[1:], target[1:], rtol=1e-5)
  np.testing.assert_allclose(alphas[0], target[0], rtol=5e-5)


@pytest.mark.parametrize('overrides,message', [
    (dict(model__mean_type='both'), "model.mean_type='both'"),
    (dict(model__args__ch_mult=(2, 2)), 'model.args.ch_mult=[2, 2]'),
    (dict(model__args__num_heads=2, model__args__ch_mult=(1, 2),
          model__args__attn_resolutions=(8,)), 'model.args.num_heads=2'),
])
def test_what_diffusers_cannot_express_is_refused_by_name(overrides,
                                                          message):
  model = diffusion_model.DiffusionModel.from_config(
      tiny_config(**overrides), (8, 8, 1), 1)
  with pytest.raises(ModelError, match=message.replace('[', r'\[')):
    diffusers_export.check_exportable(model, distilled=True, num_steps=4)


def test_a_w_conditioned_student_is_refused():
  config = tiny_config()
  config.guidance = dict(w_min=0., w_max=4., w_const=.3, num_updates=10,
                         w_input_type='inv_cos')
  model = diffusion_model.DiffusionModel.from_config(config, (8, 8, 1), 10)
  with pytest.raises(ModelError, match='w-conditioned student'):
    diffusers_export.check_exportable(model, distilled=True, num_steps=4)
  diffusers_export.check_exportable(model, distilled=False, num_steps=4)


@pytest.mark.heavy  # a process, on the suite's trained workdir
def test_export_command_writes_the_students_folder(finished_workdir,
                                                   tmp_path):
  workdir = str(finished_workdir[0])
  result = subprocess.run(
      [PYTHON, '-m', 'diffusion_distillation.export', f'--workdir={workdir}',
       '--num_steps=2', '--format=diffusers', '--output=student'],
      cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'diffusers format' in result.stdout
  out = tmp_path / 'student'
  assert sorted(str(p.relative_to(out)) for p in out.rglob('*')
                if p.is_file()) == [
                    'README.md', 'scheduler/scheduler_config.json',
                    'unet/config.json',
                    'unet/diffusion_pytorch_model.safetensors']
  student = dd.load(workdir, num_steps=2)
  expected = diffusers_export.folder(
      student.diffusion_model, jax.device_get(student.params), num_steps=2,
      distilled=True)['unet/diffusion_pytorch_model.safetensors']
  written = out / 'unet/diffusion_pytorch_model.safetensors'
  assert weights_digest(safetensors.numpy.load_file(written)) == (
      weights_digest(safetensors.numpy.load(expected)))
  assert 'set_timesteps(2)' in (out / 'README.md').read_text()
  # A folder with files in it only with --overwrite.
  before = snapshot(tmp_path)
  assert_rejected(subprocess.run(
      [PYTHON, '-m', 'diffusion_distillation.export', f'--workdir={workdir}',
       '--num_steps=2', '--format=diffusers', '--output=student'],
      cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True,
      timeout=300), 'is a folder with files in it', 'overwrite')
  assert snapshot(tmp_path) == before


def write_folder(path, contents: dict):
  for name, data in contents.items():
    (path / name).parent.mkdir(parents=True, exist_ok=True)
    (path / name).write_bytes(data)
  return str(path)


def import_folder(folder, mean_type, shape, classes):
  """The import's model of a diffusers folder (models/diffusers_network.py)
  and its parameters, as `main` builds an imported teacher."""
  config = tiny_config(distillation__teacher_checkpoint_path=folder,
                       model__architecture='diffusers',
                       model__mean_type=mean_type)
  model = diffusion_model.DiffusionModel.from_config(config, shape, classes)
  return model, diffusers_folder.load_params(folder)


def test_export_then_import_is_the_same_function(golden, tmp_path):
  """Ours -> diffusers -> the import: the same noise levels at every one of
  the T timesteps, and the imported student's DDIM gives diffusers' images
  (so ours) from the golden's noise.

  What survives: the function at diffusers' integer timesteps (float32
  rounding apart), mean_type (as prediction_type), the image shape, the
  classes, dropout, the noise levels at the timesteps. What does not:
  the config (architecture options become diffusers' names), the network
  between timesteps (the learned table is read by linear interpolation
  there, and the import's schedule is linear in t between timesteps), and a
  guided model's "no class" label shift (`num_class_embeds` = classes + 1:
  the import refuses it as a class count mismatch)."""
  name = 'eps_resblock_classes'  # ResNet-block resampling, classes, heads
  model, params, steps = variant(name)
  folder = write_folder(tmp_path / 'out', diffusers_export.folder(
      model, params, num_steps=steps, distilled=True))
  back, back_params = import_folder(folder, 'eps', (8, 8, 1), 10)
  # diffusers holds alpha^2 in float32: the same noise levels, though near
  # t = 0 (alpha^2 ~ 1) float32 resolves the logSNR to 0.004 only.
  num_timesteps = diffusers_export.num_train_timesteps(steps)
  np.testing.assert_allclose(
      1 / (1 + np.exp(-np.asarray(back.timestep_logsnrs))),
      diffusers_export.alphas_cumprod(model, num_timesteps), rtol=1e-6)
  images = jax.jit(lambda p, z, y: sampling.sample_loop(
      back.bind(p, y), z, num_steps=steps,
      logsnr_schedule_fn=back.logsnr_schedule('eval'), mean_type='eps',
      clip_x=back.clip_x))(back_params, golden[f'{name}/noise'],
                           golden[f'{name}/labels'])
  np.testing.assert_allclose(images, golden[f'{name}/images'], atol=ATOL)
  with pytest.raises(Exception, match='num_class_embeds = 11'):
    guided, guided_params, _ = variant('x_linear_guided')
    import_folder(write_folder(tmp_path / 'guided', diffusers_export.folder(
        guided, guided_params, num_steps=2, distilled=True)), 'x',
                  (8, 8, 1), 10)


def test_import_then_export_then_import_gives_the_folder_back(tmp_path):
  """A diffusers folder (the import's ADM-like test folder), imported,
  exported and imported again: the same UNet settings, the same parameters
  and the same noise levels (float32 rounding apart)."""
  source = os.path.join(os.path.dirname(__file__), 'data', 'diffusers',
                        'adm_like')
  model, params = import_folder(source, 'v', (8, 8, 3), 3)
  folder = write_folder(tmp_path / 'out', diffusers_export.folder(
      model, params, num_steps=4, distilled=False))
  back, back_params = import_folder(folder, 'v', (8, 8, 3), 3)
  assert back.network.unet == model.network.unet
  assert back.network.prediction_type == 'epsilon'  # the UNet's own
  jax.tree.map(np.testing.assert_array_equal, back_params, params)
  np.testing.assert_allclose(back.timestep_logsnrs, model.timestep_logsnrs,
                             rtol=1e-6)
  with pytest.raises(ModelError, match='num_steps=3 does not divide'):
    diffusers_export.folder(model, params, num_steps=3, distilled=False)
