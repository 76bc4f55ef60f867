"""Reading a diffusers model folder: the UNet's config and weights, the
scheduler's config.

A folder is what diffusers' `save_pretrained` writes for a pipeline
(`unet/config.json`, `unet/diffusion_pytorch_model.safetensors`,
`scheduler/scheduler_config.json`), or the UNet folder itself (its scheduler
config beside it, `../scheduler/scheduler_config.json`, or inside it). The
weights are read with safetensors' numpy API: no torch here.

State-dict keys become flax paths by diffusers' own names (`a.0.b` ->
`a_0/b`, see `models/diffusers_unet.py`); torch's layouts become flax's
(conv OIHW -> HWIO, linear (out, in) -> (in, out)). Checkpoints saved before
diffusers renamed its attention layers (`query`, `key`, `value`,
`proj_attn`) load too.
"""

import json

from etils import epath
import numpy as np
from safetensors import numpy as safetensors_numpy

UNET_CONFIG = 'config.json'
WEIGHTS = 'diffusion_pytorch_model.safetensors'
SCHEDULER_CONFIG = 'scheduler_config.json'

_OLD_ATTENTION_NAMES = {'query': 'to_q', 'key': 'to_k', 'value': 'to_v',
                        'proj_attn': 'to_out.0'}


def unet_dir(path) -> epath.Path:
  """The folder holding the UNet's config and weights: `path/unet` or
  `path` itself."""
  p = epath.Path(path)
  return p / 'unet' if (p / 'unet' / UNET_CONFIG).exists() else p


def is_diffusers_folder(path) -> bool:
  """Whether `path` is a diffusers folder (detected by its UNet's files)."""
  try:
    unet = unet_dir(path)
    return (unet / UNET_CONFIG).is_file() and (unet / WEIGHTS).is_file()
  except OSError:
    return False


def _scheduler_config_path(path) -> epath.Path:
  p = epath.Path(path)
  unet = unet_dir(p)
  for candidate in (p / 'scheduler' / SCHEDULER_CONFIG,
                    unet.parent / 'scheduler' / SCHEDULER_CONFIG,
                    unet / SCHEDULER_CONFIG):
    if candidate.is_file():
      return candidate
  raise ValueError(f'{path}: no scheduler/{SCHEDULER_CONFIG} (the '
                   "teacher's noise schedule) in or beside the diffusers "
                   'folder')


def _read_json(file: epath.Path) -> dict:
  try:
    return json.loads(file.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f'{file}: not JSON ({e})') from None


def read_configs(path) -> tuple:
  """(UNet config, scheduler config) of the folder, as parsed JSON dicts."""
  if not is_diffusers_folder(path):
    raise ValueError(f'{path} is not a diffusers folder: no {UNET_CONFIG} and '
                     f'{WEIGHTS} in it or in its unet/ folder')
  return (_read_json(unet_dir(path) / UNET_CONFIG),
          _read_json(_scheduler_config_path(path)))


def _flax_path(key: str) -> tuple:
  """`down_blocks.0.attentions.1.to_out.0.weight` ->
  ('down_blocks_0', 'attentions_1', 'to_out_0', 'weight')."""
  parts = key.split('.')
  if len(parts) > 2 and parts[-2] in _OLD_ATTENTION_NAMES:
    parts = parts[:-2] + _OLD_ATTENTION_NAMES[parts[-2]].split('.') + [
        parts[-1]]
  path = []
  for part in parts:
    if part.isdigit() and path:
      path[-1] = f'{path[-1]}_{part}'
    else:
      path.append(part)
  return tuple(path)


def _flax_leaf(path: tuple, value: np.ndarray):
  """(leaf name, array) in flax's names and layout."""
  if path[-1] == 'bias':
    return 'bias', value
  if value.ndim == 4:  # conv: OIHW -> HWIO
    return 'kernel', np.transpose(value, (2, 3, 1, 0))
  if value.ndim == 2 and path[-2] in ('class_embedding', 'time_proj'):
    return 'embedding', value
  if value.ndim == 2:  # linear: (out, in) -> (in, out)
    return 'kernel', value.T
  if value.ndim == 1:
    return 'scale', value
  raise ValueError(f"{'.'.join(path)}: an unexpected weight of shape "
                   f'{value.shape}')


def params_from_state_dict(state_dict: dict) -> dict:
  """A diffusers UNet state dict (numpy) as the `DiffusersUNet` parameter
  tree."""
  params = {}
  for key, value in state_dict.items():
    path = _flax_path(key)
    leaf, array = _flax_leaf(path, np.asarray(value, np.float32))
    node = params
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[leaf] = array
  return params


def load_params(path) -> dict:
  """The UNet's weights of the folder, as a `DiffusersUNet` parameter tree."""
  file = unet_dir(path) / WEIGHTS
  return params_from_state_dict(safetensors_numpy.load_file(str(file)))
