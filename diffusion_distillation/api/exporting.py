"""One model as one file (self-describing `native`, or the official layout),
or as a diffusers folder (`diffusers`).

`native` is the official msgpack layout trimmed to what sampling needs, plus a
description, so the authors' code still reads its parameters
(`restore_from_path(f, None)['ema_params']`) and so does
`distillation.teacher_checkpoint_path`:

    {'ema_params': params, 'num_sample_steps': N, 'step': 0,
     'diffusion_distillation': {'version': 1, 'model': 'distilled'|'teacher',
                                'config': <config JSON>, 'data_shape': [H, W, C],
                                'num_classes': K}}

`official` is exactly what the released checkpoints hold (parameters twice,
as `ema_params` and the optimizer's target); reading it back needs the config.
`diffusers` is a folder that diffusers' `UNet2DModel.from_pretrained` and
`DDIMScheduler.from_pretrained` read (`models/diffusers_export.py`). Every file is
written to a temporary file and renamed, so a reader never sees half a file.
"""

from etils import epath
import jax

from diffusion_distillation import files
from diffusion_distillation.errors import ModelError
from diffusion_distillation.models import diffusers_export
from diffusion_distillation.parallel import sharding
from diffusion_distillation.pipeline import official_checkpoints
from diffusion_distillation.pipeline import workdir_lock

FORMATS = ('native', 'official', 'diffusers')
DESCRIPTION_KEY = official_checkpoints.EXPORT_DESCRIPTION
VERSION = 1


def description(model) -> dict:
  """What a native file says about its model, besides the parameters."""
  return {'version': VERSION, 'model': model.kind,
          'config': model.config.to_json_best_effort(),
          'data_shape': list(model.image_shape),
          'num_classes': model.num_classes}


def check_output_name(output, overwrite: bool = False) -> epath.Path:
  """Refuses an output that is a directory, or an existing file unless
  `overwrite` (before any work)."""
  path = epath.Path(output)
  if path.is_dir():
    raise ModelError(f'output={output} is a directory; name a file')
  if path.exists() and not overwrite:
    raise ModelError(f'output={output} exists; pass overwrite=True to '
                     'replace it, or name another file')
  return path


def check_output(output, overwrite: bool = False) -> epath.Path:
  """`check_output_name`, and a write probe in its directory."""
  path = check_output_name(output, overwrite)
  workdir_lock.check_writable(path.parent,
                              f'{path.parent} (the directory of '
                              f'output={output})')
  return path


def write(model, output, format: str = 'native',  # pylint: disable=redefined-builtin
          overwrite: bool = False) -> epath.Path:
  """Writes `model` (see `api.model.Model`) to the file `output`, whole or
  not at all; an existing file only with `overwrite`."""
  if format not in FORMATS:
    raise ModelError(f'format={format!r}: must be one of {FORMATS}')
  if format == 'diffusers':
    return write_diffusers(model, output, overwrite)
  path = check_output(output, overwrite)
  params = sharding.to_host(model.params)
  if jax.process_index() != 0:
    return path
  if format == 'official':
    official_checkpoints.write_official_checkpoint(path, params,
                                                   model.num_steps)
  else:
    official_checkpoints.write_state(path, {
        'ema_params': official_checkpoints.to_numpy_tree(params),
        'num_sample_steps': model.num_steps,
        'step': 0,
        DESCRIPTION_KEY: description(model),
    })
  return path


def check_output_folder(output, overwrite: bool = False) -> epath.Path:
  """Refuses an output that is a file, or a folder with files in it unless
  `overwrite` (before any work)."""
  path = epath.Path(output)
  if path.exists() and not path.is_dir():
    raise ModelError(f'output={output} is a file; name a folder for '
                     'format=diffusers')
  if path.is_dir() and any(path.iterdir()) and not overwrite:
    raise ModelError(f'output={output} is a folder with files in it; pass '
                     'overwrite=True to replace them, or name another folder')
  return path


def write_diffusers(model, output, overwrite: bool = False) -> epath.Path:
  """Writes `model` as a diffusers folder `output` (`unet/`, `scheduler/`,
  README.md), each file whole; refuses what diffusers cannot express before
  writing anything."""
  path = check_output_folder(output, overwrite)
  params = sharding.to_host(model.params)
  contents = diffusers_export.folder(
      model.diffusion_model, params, num_steps=model.num_steps,
      distilled=model.kind == 'distilled')
  if jax.process_index() != 0:
    return path
  workdir_lock.check_writable(path, f'output={output}')
  for name, data in contents.items():
    files.write_bytes(path / name, data)
  return path
