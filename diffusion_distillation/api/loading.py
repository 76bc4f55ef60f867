"""`load`: a model from a workdir, an exported file or a released checkpoint.

What each source gives and what the caller adds:

* a training workdir: its config and every finished model; `num_steps` picks
  the distilled student, `model='teacher'` the base model (any step count).
* a file written by `export` (native format): everything; no config.
* an official released checkpoint (a msgpack file, or a directory of
  `checkpoint_<step>` files; local or gs://): parameters and, where recorded,
  the step count they were distilled for; the architecture, schedules and data
  set come from `config=` (see `api.configs`).
* a diffusers model folder (`unet/` and `scheduler/`, or the UNet folder
  itself): a teacher (`model='teacher'`, the default here) whose network is
  that folder's UNet on its discrete schedule; the image shape and classes
  come from the UNet's config, the rest from `config=` (default:
  `configs/diffusers_distill.py`). See docs/diffusers.md.

Every wrong combination raises `ModelError`, whose message says what is
available. The device mesh is all devices.
"""

import contextlib
import functools
import json
import os

from etils import epath
import jax

from diffusion_distillation import config as config_lib
from diffusion_distillation import data as data_lib
from diffusion_distillation import paths
from diffusion_distillation.api import configs
from diffusion_distillation.api import exporting
from diffusion_distillation.api import model as model_api
from diffusion_distillation.api.model import KINDS
from diffusion_distillation.api.model import Model
from diffusion_distillation.errors import first_line
from diffusion_distillation.errors import ModelError
from diffusion_distillation.errors import UserError
from diffusion_distillation.models import diffusers_folder
from diffusion_distillation.models import diffusion_model as model_lib
from diffusion_distillation.parallel import sharding
from diffusion_distillation.pipeline import official_checkpoints
from diffusion_distillation.pipeline import workdirs


def _one_error_type(fn):
  """Any UserError of the layers below becomes a ModelError (same message)."""

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    try:
      return fn(*args, **kwargs)
    except ModelError:
      raise
    except UserError as e:
      raise ModelError(str(e)) from None

  return wrapped


@contextlib.contextmanager
def _reading(path):
  """Failures to read `path` as one ModelError line: ours (OSError,
  ValueError) as they are, a file system's own (TensorFlow's gfile for
  gs://, a network error) with its type."""
  try:
    yield
  except (OSError, ValueError) as e:
    raise ModelError(str(e)) from None
  except Exception as e:  # pylint: disable=broad-except
    raise ModelError(f'{path}: cannot read it ({type(e).__name__}: '
                     f'{first_line(e)})') from None


def _reachable(path):
  """`path`, once its store answers (`paths.check_reachable`, bounded)."""
  try:
    paths.check_reachable(path)
  except UserError as e:
    raise ModelError(str(e)) from None
  return path


def _check_args(model, num_steps):
  if model is not None and model not in KINDS:
    raise ModelError(f'model={model!r}: must be one of {KINDS}')
  if num_steps is not None:
    model_api.steps_argument(num_steps)


def _use_compilation_cache():
  """The command-line tools' persistent compilation cache, for notebooks
  and scripts too: a second Python process loads the samplers an earlier
  one compiled instead of compiling them again. A cache directory JAX was
  given already is kept; JAX_ENABLE_COMPILATION_CACHE=false turns it off."""
  if (jax.config.jax_enable_compilation_cache and
      not jax.config.jax_compilation_cache_dir):
    jax.config.update('jax_compilation_cache_dir',
                      paths.compilation_cache_dir())


@_one_error_type
def load(path, num_steps=None, model=None, config=None) -> Model:
  """Loads a model to sample from; see the module docstring.

  Args:
    path: a training workdir, a file written by `export`, or an official
      released checkpoint (file or directory; local or gs://).
    num_steps: the distilled student's step count (a workdir: required for a
      student; a file: defaults to the step count it records), or a teacher's
      default step count.
    model: 'distilled' or 'teacher'. Default: what an exported file says it
      holds, 'distilled' otherwise.
    config: for a released checkpoint only: a config name (`config_names()`),
      the path of a config file, or a ConfigDict.

  Returns:
    A `Model`; `model.sample(n, seed=0)` draws uint8 images [n, H, W, C].

  Raises:
    ModelError: a path that is none of these, or a combination it cannot
      serve; the message says what is available.
  """
  _check_args(model, num_steps)
  _use_compilation_cache()
  if not isinstance(path, (str, os.PathLike)) or not os.fspath(path).strip():
    raise ModelError(f'path={path!r}: pass a training workdir, a file '
                     'written by export, or an official checkpoint')
  path = _reachable(paths.absolute_path(path))
  p = epath.Path(path)
  with _reading(path):
    exists = p.exists()
  if not exists:
    raise ModelError(f'{path} does not exist')
  if diffusers_folder.is_diffusers_folder(p):
    return from_diffusers(path, num_steps=num_steps, model=model,
                          config=config)
  if p.is_dir() and (p / 'config.json').exists():
    return from_workdir(path, num_steps=num_steps, model=model, config=config)
  if official_checkpoints.is_official_checkpoint(p):
    return from_checkpoint(path, num_steps=num_steps, model=model,
                           config=config)
  raise ModelError(
      f'{path} is neither a training workdir (no config.json), a file '
      'written by export, an official checkpoint (a msgpack file or a '
      'directory of checkpoint_<step> files), nor a diffusers folder')


@_one_error_type
def from_workdir(workdir, num_steps=None, model=None, config=None) -> Model:
  """A workdir's distilled student for `num_steps`, or its teacher."""
  _check_args(model, num_steps)
  workdir = paths.absolute_path(workdir)
  if config is not None:
    raise ModelError(f'{workdir} is a training workdir: it has its own config '
                     '(config.json); leave out config')
  kind = model or 'distilled'
  loaded = workdirs.open_workdir(workdir)
  if kind == 'teacher':
    params = loaded.teacher_params()
    num_steps = num_steps or loaded.config.model.eval_sampling_num_steps
  elif num_steps is None:
    available = ', '.join(map(str, loaded.student_steps())) or 'none'
    raise ModelError(f'which distilled student of {workdir}? pass '
                     f'num_steps; available step counts: {available}')
  else:
    params = loaded.student_params(num_steps)
  return Model(loaded.model, params, config=loaded.config, kind=kind,
               num_steps=num_steps, mesh=loaded.mesh, source=workdir)


@_one_error_type
def student_steps(workdir) -> list[int]:
  """The step counts of a workdir's finished distilled students, ascending.

  Args:
    workdir: a training workdir (local or gs://).

  Returns:
    The values `load(workdir, num_steps=...)` accepts for a student.

  Raises:
    ModelError: not a training workdir, or none of its stages finished.
  """
  return workdirs.open_workdir(paths.absolute_path(workdir)).student_steps()


def _exported_model(description: dict, config):
  """(config, model) of a native exported file, from its description."""
  if config is not None:
    raise ModelError('this file was written by export: it has its own config; '
                     'leave out config')
  if description.get('version') != exporting.VERSION:
    raise ModelError(f'exported with format version '
                     f'{description.get("version")!r}; this version of '
                     f'diffusion_distillation reads {exporting.VERSION}')
  config = configs.resolve_config(json.loads(description['config']))
  return config, model_lib.DiffusionModel.from_config(
      config, tuple(description['data_shape']), description['num_classes'])


def _exported_kind(file, state: dict, model) -> str:
  """What an exported file holds; `model`, if given, must say the same."""
  kind = state[exporting.DESCRIPTION_KEY]['model']
  if model is not None and model != kind:
    held = (f'the {state.get("num_sample_steps")}-step distilled student'
            if kind == 'distilled' else 'a teacher')
    raise ModelError(
        f'{file} holds {held} (written by export), not a {model} model; '
        f"leave out model, or export the workdir's {model} "
        f'(export --model={model})')
  return kind


def _released_model(path, config):
  """(config, model) of a released checkpoint, from the config it pairs with."""
  if config is None:
    raise ModelError(
        f'{path} is an official released checkpoint: it holds parameters '
        'only; pass the config it pairs with (config=NAME or a config file; '
        f'names: {", ".join(configs.config_names())})')
  config = configs.resolve_config(config)
  config_lib.validate_model(config)
  try:
    data_shape, num_classes = data_lib.shape_of(config)
  except ValueError as e:
    raise ModelError(f'config.dataset: {e}') from None
  return config, model_lib.DiffusionModel.from_config(config, data_shape,
                                                      num_classes)


def _file_steps(file, kind, num_steps, recorded, config,
                exported: bool) -> int:
  """The step count of a file's model: what it records, or what is asked."""
  if kind == 'teacher':
    return num_steps or recorded or config.model.eval_sampling_num_steps
  if num_steps is None:
    if recorded is None:
      raise ModelError(f'{file} does not record the step count it was '
                       'distilled for; pass num_steps')
    return recorded
  # (A consistency student samples in any step count.)
  if recorded is not None and num_steps != recorded and (
      'consistency' not in config):
    raise ModelError(
        f'{file} holds the {recorded}-step distilled student, not a '
        f'{num_steps}-step one; pass num_steps={recorded} (or leave it out)' +
        ('' if exported else
         ", or model='teacher' to sample it with any step count"))
  return num_steps


@_one_error_type
def from_checkpoint(path, num_steps=None, model=None, config=None) -> Model:
  """An exported file (no config), a released checkpoint (with config) or
  a diffusers folder (config optional)."""
  _check_args(model, num_steps)
  path = _reachable(paths.absolute_path(path))
  if diffusers_folder.is_diffusers_folder(path):
    return from_diffusers(path, num_steps=num_steps, model=model,
                          config=config)
  with _reading(path):
    file, state = official_checkpoints.read_official_state(path)
  description = state.get(exporting.DESCRIPTION_KEY)
  if isinstance(description, dict):
    config, diffusion = _exported_model(description, config)
    kind, source = _exported_kind(file, state, model), 'exported model'
  else:
    config, diffusion = _released_model(path, config)
    kind, source = model or 'distilled', 'official checkpoint'
  abstract = jax.eval_shape(diffusion.init_params, jax.random.PRNGKey(0))
  try:
    params, recorded = official_checkpoints.params_of_state(
        file, state, abstract, source=source)
  except ValueError as e:
    advice = '' if description else '; is it the config it pairs with?'
    raise ModelError(f'{e}{advice}') from None
  num_steps = _file_steps(file, kind, num_steps, recorded, config,
                          exported=bool(description))
  return Model(diffusion, params, config=config, kind=kind,
               num_steps=num_steps, mesh=sharding.make_mesh(), source=path)


def _diffusers_config(path, config):
  """The config of an imported teacher: `config` (default
  configs/diffusers_distill.py) with the folder as its teacher."""
  config = configs.resolve_config(config or 'diffusers_distill')
  if 'distillation' not in config:
    config = config_lib.add_section(config, 'distillation')
  config.model.architecture = 'diffusers'
  config.distillation.teacher_checkpoint_path = str(path)
  config_lib.validate_model(config)
  return config


@_one_error_type
def from_diffusers(path, num_steps=None, model=None, config=None) -> Model:
  """The teacher of a diffusers folder (see the module docstring)."""
  _check_args(model, num_steps)
  path = paths.absolute_path(path)
  if model == 'distilled':
    raise ModelError(f"{path} is a diffusers folder: it holds a teacher; "
                     "pass model='teacher' (or leave it out)")
  with _reading(path):
    unet_config, _ = diffusers_folder.read_configs(path)
    size = unet_config.get('sample_size')
    if not isinstance(size, int):
      raise ModelError(f'{path}: the UNet config has no square sample_size '
                       f'(got {size!r}): the image shape is unknown')
    shape = (size, size, unet_config.get('in_channels', 3))
    num_classes = unet_config.get('num_class_embeds') or 1
    config = _diffusers_config(path, config)
    diffusion = model_lib.DiffusionModel.from_config(config, shape,
                                                     num_classes)
    abstract = jax.eval_shape(diffusion.init_params, jax.random.PRNGKey(0))
    params = official_checkpoints.map_onto(
        diffusers_folder.load_params(path), abstract,
        source='diffusers folder')
  return Model(diffusion, params, config=config, kind='teacher',
               num_steps=num_steps or config.model.eval_sampling_num_steps,
               mesh=sharding.make_mesh(), source=path)
