"""A Flax port of diffusers' `UNet2DModel`: imported teachers compute it.

The pixel-space models people hold (the DDPM releases `google/ddpm-*`, ADM-
style UNets) are mostly diffusers folders. This module computes the same
function as diffusers' `UNet2DModel` (`models/unets/unet_2d.py`) for the
parts those models use: `DownBlock2D` / `AttnDownBlock2D` / `UpBlock2D` /
`AttnUpBlock2D` with conv resampling, `UNetMidBlock2D`, positional time
embeddings (`flip_sin_to_cos`, `freq_shift`), and for the folders our own
export writes (docs/diffusers.md) learned ones (`time_embedding_type=
'learned'`) and ResNet-block resampling (`ResnetDownsampleBlock2D`,
`ResnetUpsampleBlock2D`, `downsample_type` / `upsample_type` 'resnet'),
`resnet_time_scale_shift`
'default' and 'scale_shift', `attention_head_dim` heads and class embeddings
(`num_class_embeds`). Anything else in a config is refused by name
(`unet_settings`).

Module names are diffusers' with `.N` written `_N` (flax names list items
so), which makes loading a state dict a renaming
(`models/diffusers_folder.py`).
Layout is ours (NHWC); the network takes diffusers' discrete timestep, a
float, so any time between two training steps is an input too.
"""

import math
from typing import Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from diffusion_distillation.models.unet import Dropout

DOWN_BLOCKS = ('DownBlock2D', 'AttnDownBlock2D', 'ResnetDownsampleBlock2D')
UP_BLOCKS = ('UpBlock2D', 'AttnUpBlock2D', 'ResnetUpsampleBlock2D')
TIME_SCALE_SHIFTS = ('default', 'scale_shift')
# Choices among the settings of `_DEFAULTS`.
_CHOICES = {'time_embedding_type': ('positional', 'learned'),
            'downsample_type': ('conv', 'resnet'),
            'upsample_type': ('conv', 'resnet')}

# Settings of `UNet2DModel` this port honours, with the values it honours
# (None: any value); the defaults of `UNet2DModel.__init__` fill the rest.
_FIXED = {
    'mid_block_type': 'UNetMidBlock2D', 'act_fn': 'silu',
    'add_attention': True, 'class_embed_type': None,
    'center_input_sample': False,
}
_DEFAULTS = {
    'in_channels': 3, 'out_channels': 3, 'freq_shift': 0,
    'flip_sin_to_cos': True, 'layers_per_block': 2,
    'block_out_channels': (224, 448, 672, 896),
    'down_block_types': ('DownBlock2D', 'AttnDownBlock2D', 'AttnDownBlock2D',
                         'AttnDownBlock2D'),
    'up_block_types': ('AttnUpBlock2D', 'AttnUpBlock2D', 'AttnUpBlock2D',
                       'UpBlock2D'),
    'mid_block_scale_factor': 1., 'downsample_padding': 1, 'dropout': 0.,
    'attention_head_dim': 8, 'norm_num_groups': 32,
    'attn_norm_num_groups': None, 'norm_eps': 1e-5,
    'resnet_time_scale_shift': 'default', 'num_class_embeds': None,
    'time_embedding_dim': None, 'time_embedding_type': 'positional',
    'num_train_timesteps': None, 'downsample_type': 'conv',
    'upsample_type': 'conv',
}
# Read by diffusers for other purposes (or not at all): no effect here.
_IGNORED = ('sample_size',)


def unet_settings(unet_json: dict) -> dict:
  """The `DiffusersUNet` fields of a diffusers UNet `config.json`.

  Args:
    unet_json: the parsed `config.json` of a `UNet2DModel`.

  Returns:
    keyword arguments of `DiffusersUNet` (tuples for lists: hashable).

  Raises:
    ValueError: a setting this port cannot honour, named, in one line.
  """
  if unet_json.get('_class_name', 'UNet2DModel') != 'UNet2DModel':
    raise ValueError(f"_class_name = {unet_json['_class_name']!r}: only "
                     'UNet2DModel folders can be imported')
  settings = dict(_DEFAULTS)
  for key, value in unet_json.items():
    if key.startswith('_') or key in _IGNORED:
      continue
    if key in _FIXED:
      if value != _FIXED[key]:
        raise ValueError(f'{key} = {value!r}: the import supports '
                         f'{_FIXED[key]!r} only')
    elif key in _DEFAULTS:
      settings[key] = tuple(value) if isinstance(value, list) else value
    else:
      raise ValueError(f'{key} = {value!r}: a UNet2DModel setting the import '
                       'does not know')
  _check_choices(settings)
  return settings


def _check_choices(settings: dict):
  """Block types and the time shift among the ported ones."""
  for key, known in (('down_block_types', DOWN_BLOCKS),
                     ('up_block_types', UP_BLOCKS)):
    for block in settings[key]:
      if block not in known:
        raise ValueError(f'{key}: {block!r} is not ported; known: {known}')
  if settings['resnet_time_scale_shift'] not in TIME_SCALE_SHIFTS:
    raise ValueError(
        f"resnet_time_scale_shift = {settings['resnet_time_scale_shift']!r}:"
        f' the import supports {TIME_SCALE_SHIFTS}')
  for key, known in _CHOICES.items():
    if settings[key] not in known:
      raise ValueError(f'{key} = {settings[key]!r}: the import supports '
                       f'{known}')
  if (settings['time_embedding_type'] == 'learned' and
      not isinstance(settings['num_train_timesteps'], int)):
    raise ValueError("time_embedding_type = 'learned' needs an integer "
                     'num_train_timesteps (the rows of its table)')
  if settings['norm_num_groups'] is None:
    raise ValueError('norm_num_groups = None: the import needs a number')


def timestep_embedding(timesteps, dim: int, flip_sin_to_cos: bool,
                       freq_shift: float, max_period: float = 10000.):
  """diffusers' `get_timestep_embedding`: sinusoids of the (float) timestep."""
  half = dim // 2
  exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32)
  freqs = jnp.exp(exponent / (half - freq_shift))
  args = timesteps.astype(jnp.float32)[:, None] * freqs[None]
  parts = (jnp.cos(args), jnp.sin(args)) if flip_sin_to_cos else (
      jnp.sin(args), jnp.cos(args))
  emb = jnp.concatenate(parts, axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim % 2)))


def _conv(features: int, name: str, kernel: int = 3, strides: int = 1,
          padding=None):
  pad = kernel // 2 if padding is None else padding
  padding = ((pad, pad), (pad, pad)) if isinstance(pad, int) else pad
  return nn.Conv(features, (kernel, kernel), strides=(strides, strides),
                 padding=padding, name=name)


def _norm(groups: int, eps: float, name: str):
  return nn.GroupNorm(num_groups=groups, epsilon=eps, use_fast_variance=False,
                      name=name)


class ResnetBlock2D(nn.Module):
  """diffusers' `ResnetBlock2D`: the embedding is added ('default') or scales
  and shifts the second norm ('scale_shift'); with `resample` ('down' / 'up',
  its `down=True` / `up=True`) both branches are average-pooled or nearest-
  upsampled right after the first activation."""
  out_channels: int
  groups: int
  eps: float
  time_scale_shift: str
  dropout: float
  output_scale_factor: float = 1.
  resample: Optional[str] = None

  @nn.compact
  def __call__(self, x, temb, train: bool, microbatch=None):
    out = self.out_channels
    h = nn.silu(_norm(self.groups, self.eps, 'norm1')(x))
    if self.resample == 'down':
      h, x = (nn.avg_pool(a, (2, 2), strides=(2, 2)) for a in (h, x))
    elif self.resample == 'up':
      h, x = (jnp.repeat(jnp.repeat(a, 2, axis=1), 2, axis=2) for a in (h, x))
    h = _conv(out, 'conv1')(h)
    scale_shift = self.time_scale_shift == 'scale_shift'
    temb = nn.Dense(2 * out if scale_shift else out, name='time_emb_proj')(
        nn.silu(temb))[:, None, None, :]
    if scale_shift:
      scale, shift = jnp.split(temb, 2, axis=-1)
      h = _norm(self.groups, self.eps, 'norm2')(h) * (1 + scale) + shift
    else:
      h = _norm(self.groups, self.eps, 'norm2')(h + temb)
    h = Dropout(self.dropout, name='dropout')(nn.silu(h), not train,
                                                microbatch)
    h = _conv(out, 'conv2')(h)
    if x.shape[-1] != out:
      x = _conv(out, 'conv_shortcut', kernel=1)(x)
    return (x + h) / self.output_scale_factor


class Attention(nn.Module):
  """diffusers' `Attention` as the UNet's attention blocks use it: optional
  GroupNorm, multi-head self-attention over positions, residual, rescale."""
  head_dim: int
  groups: Optional[int]
  eps: float
  output_scale_factor: float = 1.

  @nn.compact
  def __call__(self, x):
    b, height, width, c = x.shape
    h = x if self.groups is None else _norm(self.groups, self.eps,
                                            'group_norm')(x)
    h = h.reshape(b, height * width, c)
    heads = c // self.head_dim
    q, k, v = (nn.Dense(c, name=name)(h).reshape(b, -1, heads, self.head_dim)
               for name in ('to_q', 'to_k', 'to_v'))
    h = nn.dot_product_attention(q, k, v).reshape(b, height * width, c)
    h = nn.Dense(c, name='to_out_0')(h).reshape(x.shape)
    return (h + x) / self.output_scale_factor


class Block(nn.Module):
  """One down or up block of diffusers (its resnets, attentions if an Attn
  block, then its resampler): `down_blocks.N` / `up_blocks.N`."""
  kind: str  # one of DOWN_BLOCKS + UP_BLOCKS
  out_channels: int
  num_layers: int
  resample: Optional[str]  # 'down', 'up' or None (the last level)
  settings: Tuple[Tuple[str, object], ...]  # (key, value) of unet_settings

  @nn.compact
  def __call__(self, h, temb, skips, train: bool, microbatch=None):
    """Returns (h, outputs): `outputs` are a down block's skip connections;
    an up block takes one from `skips` (a list, popped) before each resnet."""
    s = dict(self.settings)
    outputs = []
    for i in range(self.num_layers):
      if self.kind in UP_BLOCKS:
        h = jnp.concatenate([h, skips.pop()], axis=-1)
      h = ResnetBlock2D(self.out_channels, s['norm_num_groups'],
                        s['norm_eps'], s['resnet_time_scale_shift'],
                        s['dropout'], name=f'resnets_{i}')(
                            h, temb, train, microbatch)
      if self.kind.startswith('Attn'):
        h = Attention(_head_dim(s, self.out_channels), s['norm_num_groups'],
                      s['norm_eps'], name=f'attentions_{i}')(h)
      outputs.append(h)
    if self.resample is not None:
      h = self._resample(h, temb, s, train, microbatch)
      if self.resample == 'down':
        outputs.append(h)
    return h, outputs

  def _resample(self, h, temb, s, train, microbatch):
    """The block's resampler: a ResNet block (`Resnet*sampleBlock2D`, or an
    Attn block with `downsample_type` / `upsample_type` 'resnet') or a
    convolution."""
    name = f'{self.resample}samplers_0'
    if self.kind.startswith('Resnet') or (
        self.kind.startswith('Attn') and
        s[f'{self.resample}sample_type'] == 'resnet'):
      return ResnetBlock2D(self.out_channels, s['norm_num_groups'],
                           s['norm_eps'], s['resnet_time_scale_shift'],
                           s['dropout'], resample=self.resample, name=name)(
                               h, temb, train, microbatch)
    return Resample(self.resample, self.out_channels,
                    s['downsample_padding'], name=name)(h)


class Resample(nn.Module):
  """diffusers' `Downsample2D` (a stride-2 conv; padding 0 pads right and
  bottom by one) or `Upsample2D` (nearest 2x, then a conv)."""
  direction: str  # 'down' or 'up'
  out_channels: int
  padding: int

  @nn.compact
  def __call__(self, h):
    if self.direction == 'up':
      h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
      return _conv(self.out_channels, 'conv')(h)
    pad = self.padding if self.padding else ((0, 1), (0, 1))
    return _conv(self.out_channels, 'conv', strides=2, padding=pad)(h)


def _head_dim(settings: dict, channels: int) -> int:
  """`attention_head_dim`, or one head over all channels when it is None."""
  return settings['attention_head_dim'] or channels


class MidBlock(nn.Module):
  """diffusers' `UNetMidBlock2D`: resnet, attention, resnet. Its attention
  has a GroupNorm unless `attn_norm_num_groups` is None and the time shift
  is 'scale_shift' (diffusers' rule)."""
  settings: Tuple[Tuple[str, object], ...]

  @nn.compact
  def __call__(self, h, temb, train: bool, microbatch=None):
    s = dict(self.settings)
    channels = h.shape[-1]
    groups = s['attn_norm_num_groups']
    if groups is None and s['resnet_time_scale_shift'] == 'default':
      groups = s['norm_num_groups']
    scale = float(s['mid_block_scale_factor'])
    for i in range(2):
      if i:
        h = Attention(_head_dim(s, channels), groups, s['norm_eps'], scale,
                      name='attentions_0')(h)
      h = ResnetBlock2D(channels, s['norm_num_groups'], s['norm_eps'],
                        s['resnet_time_scale_shift'], s['dropout'], scale,
                        name=f'resnets_{i}')(h, temb, train, microbatch)
    return h


class DiffusersUNet(nn.Module):
  """diffusers' `UNet2DModel(**config)` as a function of NHWC images, float
  timesteps (B,) and class labels (B,) (ignored without class embeddings).

  Build it with `DiffusersUNet.from_config(config_json)`.
  """
  settings: Tuple[Tuple[str, object], ...]  # sorted items of unet_settings

  @classmethod
  def from_config(cls, config: dict) -> 'DiffusersUNet':
    return cls(tuple(sorted(unet_settings(config).items())))

  def setting(self, key: str):
    return dict(self.settings)[key]

  @nn.compact
  def __call__(self, x, timesteps, labels, *, train: bool = False,
               microbatch=None):
    s = dict(self.settings)
    channels = s['block_out_channels']
    temb = self._embedding(timesteps, labels, s)
    h = _conv(channels[0], 'conv_in')(x)
    skips = [h]
    levels = len(channels)
    for i, kind in enumerate(s['down_block_types']):
      h, outputs = Block(kind, channels[i], s['layers_per_block'],
                         'down' if i < levels - 1 else None, self.settings,
                         name=f'down_blocks_{i}')(h, temb, None, train,
                                                  microbatch)
      skips.extend(outputs)
    h = MidBlock(self.settings, name='mid_block')(h, temb, train, microbatch)
    for i, kind in enumerate(s['up_block_types']):
      h, _ = Block(kind, channels[levels - 1 - i], s['layers_per_block'] + 1,
                   'up' if i < levels - 1 else None, self.settings,
                   name=f'up_blocks_{i}')(h, temb, skips, train, microbatch)
    h = nn.silu(_norm(s['norm_num_groups'], s['norm_eps'], 'conv_norm_out')(h))
    return _conv(s['out_channels'], 'conv_out')(h)

  def _embedding(self, timesteps, labels, s):
    """TimestepEmbedding of the sinusoids, plus the class embedding."""
    channels = s['block_out_channels'][0]
    dim = s['time_embedding_dim'] or 4 * channels
    if s['time_embedding_type'] == 'learned':
      emb = LearnedTimesteps(s['num_train_timesteps'], channels,
                             name='time_proj')(timesteps)
    else:
      emb = timestep_embedding(timesteps, channels, s['flip_sin_to_cos'],
                               s['freq_shift'])
    emb = TimestepEmbedding(dim, name='time_embedding')(emb)
    if s['num_class_embeds'] is not None:
      emb = emb + nn.Embed(s['num_class_embeds'], dim,
                           name='class_embedding')(labels)
    return emb


class TimestepEmbedding(nn.Module):
  """diffusers' `TimestepEmbedding`: linear, SiLU, linear."""
  dim: int

  @nn.compact
  def __call__(self, emb):
    emb = nn.Dense(self.dim, name='linear_1')(emb)
    return nn.Dense(self.dim, name='linear_2')(nn.silu(emb))


class LearnedTimesteps(nn.Module):
  """diffusers' learned `time_proj` (an embedding row per integer timestep),
  read between rows by linear interpolation: exact at the integers, and
  continuous between them, where distillation asks too."""
  num_timesteps: int
  dim: int

  @nn.compact
  def __call__(self, timesteps):
    table = jnp.asarray(self.param('embedding', nn.initializers.normal(1.),
                                   (self.num_timesteps, self.dim)))
    k = jnp.clip(timesteps.astype(jnp.float32), 0, self.num_timesteps - 1)
    low = jnp.floor(k)
    frac = (k - low)[:, None]
    low = low.astype(jnp.int32)
    high = jnp.minimum(low + 1, self.num_timesteps - 1)
    return table[low] * (1 - frac) + table[high] * frac
