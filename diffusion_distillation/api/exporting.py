"""One model as one file: self-describing (`native`) or the official layout.

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
Both are written to a temporary file and renamed, so a reader never sees half
a file.
"""

from etils import epath
import jax

from diffusion_distillation.errors import ModelError
from diffusion_distillation.parallel import sharding
from diffusion_distillation.pipeline import official_checkpoints
from diffusion_distillation.pipeline import workdir_lock

FORMATS = ('native', 'official')
DESCRIPTION_KEY = 'diffusion_distillation'
VERSION = 1


def description(model) -> dict:
  """What a native file says about its model, besides the parameters."""
  return {'version': VERSION, 'model': model.kind,
          'config': model.config.to_json_best_effort(),
          'data_shape': list(model.image_shape),
          'num_classes': model.num_classes}


def check_output_name(output) -> epath.Path:
  """Refuses an output that is a directory (before any work)."""
  path = epath.Path(output)
  if path.is_dir():
    raise ModelError(f'--output={output} is a directory; name a file')
  return path


def check_output(output) -> epath.Path:
  """`check_output_name`, and a write probe in its directory."""
  path = check_output_name(output)
  workdir_lock.check_writable(path.parent,
                              f'{path.parent} (the directory of --output)')
  return path


def write(model, output, format: str = 'native') -> epath.Path:  # pylint: disable=redefined-builtin
  """Writes `model` (see `api.model.Model`) to the file `output`."""
  if format not in FORMATS:
    raise ModelError(f'format={format!r}: must be one of {FORMATS}')
  path = check_output(output)
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
