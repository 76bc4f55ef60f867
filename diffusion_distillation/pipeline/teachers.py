"""Where a distillation run's first teacher comes from when it is not trained here.

`distillation.teacher_checkpoint_path` may name
  * a released official checkpoint (flax msgpack, file or directory), or
  * one of our workdirs (its base model is the teacher), or
  * one stage directory of ours (`WORKDIR/checkpoints/<stage>`), or
  * a diffusers model folder (`model.architecture = 'diffusers'`, whose
    network is then that folder's UNet: docs/diffusers.md).
"""

from etils import epath
import jax
import numpy as np

from diffusion_distillation.config import ConfigError
from diffusion_distillation.models import diffusers_folder
from diffusion_distillation.pipeline import checkpoints
from diffusion_distillation.pipeline import official_checkpoints

FIELD = 'config.distillation.teacher_checkpoint_path'


def check_teacher_path(config):
  """Fails early (before the workdir is touched) if the path does not exist."""
  if 'distillation' not in config:
    return
  distill = config.distillation
  if not distill.teacher_checkpoint_path:
    return
  if not epath.Path(distill.teacher_checkpoint_path).exists():
    raise ConfigError(
        f'{FIELD}: {distill.teacher_checkpoint_path!r} does not exist')


def _own_stage_dir(path: epath.Path) -> epath.Path:
  """Resolves a workdir to its base stage; a stage directory stays as is."""
  if (path / 'checkpoints' / 'base').exists():
    return path / 'checkpoints' / 'base'
  return path


def _load_own(path: epath.Path, abstract_params):
  """EMA parameters and sampler steps from one of our stage directories."""
  directory = _own_stage_dir(path)
  manager = checkpoints.StageCheckpoints(directory, read_only=True)
  step = manager.latest_step()
  if step is None:
    manager.close()
    raise ConfigError(f'{FIELD}: no checkpoint found in {str(path)!r}')
  state, meta = manager.restore_as_saved(step)
  manager.close()
  average = state.get('ema_params')  # None: a stage without EMA
  params = official_checkpoints.map_onto(
      state['params'] if average is None else average, abstract_params,
      source=str(directory))
  return params, meta.get('num_sample_steps') or None


def _load(path: epath.Path, model):
  """(params, num_steps) of the teacher at `path`, shaped for `model`."""
  abstract = jax.eval_shape(model.init_params, jax.random.PRNGKey(0))
  if diffusers_folder.is_diffusers_folder(path):
    params = official_checkpoints.map_onto(
        diffusers_folder.load_params(path), abstract,
        source='diffusers folder')
    return params, None
  if official_checkpoints.is_official_checkpoint(path):
    return official_checkpoints.load_official_checkpoint(path, abstract)
  return _load_own(path, abstract)


def load_external_teacher(ctx, config):
  """The teacher's parameters, checked against the config's architecture.

  Guided distillation: a guided teacher trained without the students' w
  layers (configs/imagenet64_guided_base.py) gets fresh ones for stage one
  (see `DiffusionModel.add_w_layers`); without stage one
  (`guidance.num_updates` = 0) the teacher must be w-conditioned already.
  """
  path = epath.Path(config.distillation.teacher_checkpoint_path)
  model = ctx.base_model
  try:
    params, num_steps = _load(path, model)
  except ValueError as e:
    if not model.w_range or not config.guidance.num_updates:
      raise ConfigError(f'{FIELD}: {e}') from None
    try:
      params, num_steps = _load(path, model.without_w_layers())
    except ValueError:
      raise ConfigError(f'{FIELD}: {e}') from None
    params = model.add_w_layers(params, jax.random.PRNGKey(config.seed))
  start = config.distillation.start_num_steps
  if num_steps and num_steps != start:
    raise ConfigError(
        f'{FIELD}: the teacher samples in {num_steps} steps but '
        f'config.distillation.start_num_steps is {start}; set '
        f'--config.distillation.start_num_steps={num_steps}')
  return jax.tree.map(lambda x: np.asarray(x, np.float32), params)
