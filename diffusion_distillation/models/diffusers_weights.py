"""Our UNet's parameters as diffusers' `UNet2DModel` state dict.

Module by module (`module_names`): our `down_{i}.block_{j}` is diffusers'
`down_blocks.{i}.resnets.{j}`, our up level i its `up_blocks.{L-1-i}`, and
so on; layer by layer in torch's layouts: convolutions OIHW (flax HWIO),
linear weights (out, in) (flax (in, out)), our multi-head q/k/v/proj_out
kernels flattened head-major, our 1x1 `nin_shortcut` Dense as a 1x1 conv and
our one-hot class Dense as an embedding table with its bias in every row.
"""

from flax import traverse_util
import numpy as np

from diffusion_distillation.errors import ModelError


def attended_levels(model) -> list:
  """The resolution levels whose blocks attend (`attn_resolutions` holds
  their image size)."""
  net, size = model.network, model.data_shape[0]
  return [level for level in range(len(net.ch_mult))
          if size // 2**level in net.attn_resolutions]


# Each layer kind as (our leaf -> its leaf, torch layout): torch convolutions
# are OIHW (flax HWIO), linear weights (out, in) (flax (in, out)).


def _norm(p):
  return {'weight': p['scale'], 'bias': p['bias']}


def _conv(p):
  return {'weight': np.transpose(p['kernel'], (3, 2, 0, 1)), 'bias': p['bias']}


def _dense(p):
  return {'weight': np.transpose(p['kernel']), 'bias': p['bias']}


def _conv1x1(p):
  """Our `nin_shortcut` (a Dense over channels) as diffusers' 1x1 conv."""
  return {'weight': np.transpose(p['kernel'])[:, :, None, None],
          'bias': p['bias']}


def _heads_in(p):
  """q, k, v: kernel (C, heads, head_dim) -> (heads * head_dim, C), the
  head-major feature order diffusers splits its heads by."""
  kernel = p['kernel']
  return {'weight': np.transpose(kernel.reshape(kernel.shape[0], -1)),
          'bias': p['bias'].reshape(-1)}


def _heads_out(p):
  """proj_out: kernel (heads, head_dim, C) -> (C, heads * head_dim)."""
  kernel = p['kernel']
  return {'weight': np.transpose(kernel.reshape(-1, kernel.shape[-1])),
          'bias': p['bias']}


def _resnet(p):
  layers = {'norm1': ('norm1', _norm), 'conv1': ('conv1', _conv),
            'temb_proj': ('time_emb_proj', _dense), 'norm2': ('norm2', _norm),
            'conv2': ('conv2', _conv),
            'nin_shortcut': ('conv_shortcut', _conv1x1)}
  return _nested(p, layers)


def _attention(p):
  layers = {'norm': ('group_norm', _norm), 'q': ('to_q', _heads_in),
            'k': ('to_k', _heads_in), 'v': ('to_v', _heads_in),
            'proj_out': ('to_out.0', _heads_out)}
  return _nested(p, layers)


def _nested(p, layers):
  unknown = sorted(set(p) - set(layers))
  if unknown:
    raise ModelError(f'parameters {unknown} have no UNet2DModel place')
  out = {}
  for ours, (theirs, convert) in layers.items():
    if ours in p:
      out.update({f'{theirs}.{k}': v for k, v in convert(p[ours]).items()})
  return out


def module_names(model) -> list:
  """(our module, its UNet2DModel prefix, converter) for every module of our
  network but the class embedding."""
  net = model.network
  last = len(net.ch_mult) - 1
  attends = set(attended_levels(model))
  resample = ((lambda where: (f'{where}.0', _resnet)) if net.resblock_resample
              else (lambda where: (f'{where}.0.conv', _conv)))
  names = [('conv_in', 'conv_in', _conv),
           ('dense0', 'time_embedding.linear_1', _dense),
           ('dense1', 'time_embedding.linear_2', _dense)]
  for level in range(last + 1):
    down, up = f'down_blocks.{level}', f'up_blocks.{last - level}'
    for i in range(net.num_res_blocks + 1):
      if i < net.num_res_blocks:
        names.append((f'down_{level}.block_{i}', f'{down}.resnets.{i}',
                      _resnet))
      names.append((f'up_{level}.block_{i}', f'{up}.resnets.{i}', _resnet))
      if level in attends:
        if i < net.num_res_blocks:
          names.append((f'down_{level}.attn_{i}', f'{down}.attentions.{i}',
                        _attention))
        names.append((f'up_{level}.attn_{i}', f'{up}.attentions.{i}',
                      _attention))
    if level != last:
      names.append((f'down_{level}.downsample',
                    *resample(f'{down}.downsamplers')))
    if level != 0:
      names.append((f'up_{level}.upsample', *resample(f'{up}.upsamplers')))
  return names + [('mid.block_1', 'mid_block.resnets.0', _resnet),
                  ('mid.attn_1', 'mid_block.attentions.0', _attention),
                  ('mid.block_2', 'mid_block.resnets.1', _resnet),
                  ('norm_out', 'conv_norm_out', _norm),
                  ('conv_out', 'conv_out', _conv)]


def state_dict(model, params, time_table) -> dict:
  """UNet2DModel's state dict (float32 numpy, torch layouts) of `params`,
  our network's parameter tree, with `time_table` as its learned timestep
  embedding; every parameter has exactly one place."""
  params = {name: _numpy(tree) for name, tree in params.items()}
  names = module_names(model)
  unknown = sorted(set(params) - {ours for ours, _, _ in names} -
                   {'class_emb'})
  if unknown:
    raise ModelError(f'parameters {unknown} have no UNet2DModel place')
  out = {'time_proj.weight': time_table}
  for ours, theirs, convert in names:
    out.update({f'{theirs}.{k}': v for k, v in convert(params[ours]).items()})
  if 'class_emb' in params:
    # A one-hot Dense is a lookup of kernel rows plus the bias: diffusers'
    # nn.Embedding has no bias, so every row carries it.
    emb = params['class_emb']
    out['class_embedding.weight'] = emb['kernel'] + emb['bias'][None, :]
  return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


def _numpy(tree):
  if isinstance(tree, dict):
    return {k: _numpy(v) for k, v in tree.items()}
  return np.asarray(tree, np.float32)


# The list-valued modules of UNet2DModel, whose items the import names
# `<list>_<index>` (models/diffusers_folder.py).
_LISTS = ('down_blocks', 'up_blocks', 'resnets', 'attentions', 'downsamplers',
          'upsamplers', 'to_out')


def _torch_name(part: str) -> str:
  base, _, index = part.rpartition('_')
  return f'{base}.{index}' if base in _LISTS and index.isdigit() else part


def imported_state_dict(params) -> dict:
  """The state dict of an imported UNet's parameter tree (`DiffusersUNet`,
  models/diffusers_unet.py): the inverse of the import's renaming."""
  out = {}
  for path, value in traverse_util.flatten_dict(params).items():
    value = np.asarray(value, np.float32)
    if path[-1] == 'kernel':
      value = (np.transpose(value, (3, 2, 0, 1)) if value.ndim == 4 else
               np.transpose(value))
    leaf = 'bias' if path[-1] == 'bias' else 'weight'
    out['.'.join([_torch_name(p) for p in path[:-1]] + [leaf])] = value
  return {k: np.ascontiguousarray(v) for k, v in out.items()}
