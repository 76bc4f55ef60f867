"""A model as a diffusers folder: `UNet2DModel` weights plus a `DDIMScheduler`.

What `export --format=diffusers` writes, as pure functions of a
`DiffusionModel`, its parameters and its step count N:

* The network maps one to one onto diffusers' `UNet2DModel` for the options
  our configs use: ResNet blocks with the embedding as the scale and shift of
  their second GroupNorm (`resnet_time_scale_shift='scale_shift'`), GroupNorm
  eps 1e-6 everywhere (attention's too: `attn_norm_num_groups=32`), TF 'SAME'
  strided downsampling convolutions (`downsample_padding=0` pads right and
  bottom only), and with `resblock_resample` the resampling ResNet blocks
  (`downsample_type='resnet'`, average pooling and nearest upsampling inside
  the block, as ours). Options it cannot express are refused by name.
* The timestep: ours embeds a function of the logSNR (`logsnr_input_type`),
  diffusers the raw integer timestep. The exported UNet uses
  `time_embedding_type='learned'`, a table (`time_proj.weight`) whose row k is
  exactly our sinusoidal embedding at t = (k + 1) / T, so the integer timestep
  k reproduces our network at that t for every `logsnr_input_type`.
* The schedule: T = N * ceil(1000 / N) train timesteps, `trained_betas` whose
  products are our alpha^2 = sigmoid(logsnr(t)) at t = (k + 1) / T, and
  `timestep_spacing='trailing'`, so that `set_timesteps(N)` gives k = T i / N
  - 1 for i = N..1: our grid t = i / N (any M dividing T gives the grid i / M
  as well). The last step lands on `set_alpha_to_one` (alpha = 1): the clean x
  prediction, which is what our sampler returns.
"""

import json
import math

import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from diffusion_distillation.models import diffusers_weights
from diffusion_distillation.errors import ModelError
from diffusion_distillation.models import unet as unet_lib

# Our `model.mean_type` -> diffusers' `prediction_type` ('both' has none).
PREDICTION_TYPES = {'x': 'sample', 'eps': 'epsilon', 'v': 'v_prediction'}
# The step count whose multiples the scheduler's timesteps are (about).
TRAIN_TIMESTEPS = 1000
# flax's GroupNorm epsilon; diffusers' defaults to 1e-5.
NORM_EPS = 1e-6


def num_train_timesteps(num_steps: int) -> int:
  """T: the smallest multiple of `num_steps` that is >= 1000, so that the
  N-step grid t = i / N falls on timesteps (T i / N - 1)."""
  return num_steps * math.ceil(TRAIN_TIMESTEPS / num_steps)


def imported(model) -> bool:
  """Whether `model`'s network is an imported diffusers UNet
  (`model.architecture='diffusers'`): a teacher read from a diffusers folder,
  or a student distilled from one."""
  return model.timestep_logsnrs is not None


def check_exportable(model, distilled: bool, num_steps: int):
  """Raises ModelError naming the first option of `model` (a
  `DiffusionModel`) that diffusers' UNet2DModel + DDIMScheduler cannot
  express."""
  if imported(model):
    num_timesteps = len(model.timestep_logsnrs)
    if num_timesteps % num_steps:
      raise ModelError(
          f'num_steps={num_steps} does not divide the imported schedule\'s '
          f'{num_timesteps} timesteps: its grid t = i / {num_steps} lies '
          "between diffusers' timesteps")
    return
  if model.mean_type not in PREDICTION_TYPES:
    raise ModelError(
        f'model.mean_type={model.mean_type!r} (x and eps blended by logSNR) '
        'has no diffusers prediction_type; only x, eps and v export')
  if model.sampled(distilled).w_conditioned:
    raise ModelError('a w-conditioned student (guided distillation: w_dense0,'
                     ' w_dense1) has no diffusers UNet2DModel equivalent')
  ch_mult = model.network.ch_mult
  if ch_mult[0] != 1:
    raise ModelError(
        f'model.args.ch_mult={list(ch_mult)}: diffusers embeds the timestep '
        'with ch * ch_mult[0] channels, ours with ch; it must start with 1')
  attention_head_dim(model)


def attention_head_dim(model):
  """diffusers' one `attention_head_dim` for every attention layer (None: one
  head of all channels), or ModelError when ours has no single one."""
  net = model.network
  if net.head_dim is not None:
    return net.head_dim
  if net.num_heads == 1:
    return None
  widths = {net.ch * net.ch_mult[level] for level in diffusers_weights.attended_levels(model)}
  widths.add(net.ch * net.ch_mult[-1])  # the middle block's attention
  dims = {width // net.num_heads for width in widths}
  if len(dims) != 1:
    raise ModelError(
        f'model.args.num_heads={net.num_heads} over attention widths '
        f'{sorted(widths)}: diffusers has one head width for all of them; '
        'use model.args.head_dim')
  return dims.pop()


def unet_config(model, num_timesteps: int) -> dict:
  """The `UNet2DModel` config (`unet/config.json`) of `model`'s network."""
  net = model.network
  levels = range(len(net.ch_mult))
  attends = set(diffusers_weights.attended_levels(model))
  kind = 'Resnet' if net.resblock_resample else ''

  def block(level, direction):
    if level in attends:
      return f'Attn{direction.capitalize()}Block2D'
    if kind:
      return f'Resnet{direction.capitalize()}sampleBlock2D'
    return f'{direction.capitalize()}Block2D'

  classes = model.num_classes + int(net.extra_class)
  return {
      '_class_name': 'UNet2DModel',
      'sample_size': model.data_shape[0],
      'in_channels': model.data_shape[-1],
      'out_channels': net.out_ch,
      'center_input_sample': False,
      'time_embedding_type': 'learned',
      'time_embedding_dim': net.emb_ch,
      'num_train_timesteps': num_timesteps,
      'down_block_types': [block(level, 'down') for level in levels],
      'up_block_types': [block(level, 'up') for level in reversed(levels)],
      'block_out_channels': [net.ch * m for m in net.ch_mult],
      'layers_per_block': net.num_res_blocks,
      'mid_block_scale_factor': 1,
      'downsample_padding': 0,
      'downsample_type': 'resnet' if kind else 'conv',
      'upsample_type': 'resnet' if kind else 'conv',
      'dropout': net.dropout,
      'act_fn': 'silu',
      'attention_head_dim': attention_head_dim(model),
      'norm_num_groups': 32,
      'attn_norm_num_groups': 32,
      'norm_eps': NORM_EPS,
      'resnet_time_scale_shift': 'scale_shift',
      'add_attention': True,
      'class_embed_type': None,
      'num_class_embeds': classes if model.num_classes > 1 else None,
  }


def grid_times(num_timesteps: int) -> jnp.ndarray:
  """t = (k + 1) / T of timestep k, in float32 as our sampler computes its
  grid (i / N is the same correctly rounded quotient)."""
  return (jnp.arange(1, num_timesteps + 1, dtype=jnp.float32) /
          jnp.float32(num_timesteps))


def alphas_cumprod(model, num_timesteps: int) -> np.ndarray:
  """alpha^2 = sigmoid(logsnr(t)) at every timestep's t (float64), with the
  logSNR of the sampler's ('eval') schedule computed as our sampler does (an
  imported model's: those of its timesteps)."""
  if imported(model):
    logsnr = np.asarray(model.timestep_logsnrs, np.float64)
  else:
    logsnr = np.asarray(
        model.logsnr_schedule('eval')(grid_times(num_timesteps)), np.float64)
  return 1. / (1. + np.exp(-logsnr))


def prediction_type(model) -> str:
  """What the exported UNet predicts: our mean_type's name in diffusers, or
  an imported UNet's own (its network converts it to our mean_type, as
  diffusers' scheduler does)."""
  if imported(model):
    return model.network.prediction_type
  return PREDICTION_TYPES[model.mean_type]


def trained_betas(cumprod: np.ndarray) -> np.ndarray:
  """Betas whose products, as DDIMScheduler forms them, are `cumprod`.

  diffusers rounds the betas to float32, takes alpha = 1 - beta in float32
  and their running product (torch on CPU: accumulated in float64, each
  result rounded to float32). Choosing every alpha (a float32 with 1 - alpha
  a float32 too) against the product so far, rather than as the plain ratio
  cumprod[k] / cumprod[k - 1], keeps float32 rounding from accumulating over
  the T factors: each product is within a float32 rounding of its target,
  but where the ratio is below 1/2 (the last steps before t = 1), whose
  alpha is a multiple of 2^-24.
  """
  betas = np.empty_like(cumprod)
  product = 1.
  for k, target in enumerate(cumprod):
    ratio = target / product
    alpha = (float(np.float32(ratio)) if ratio >= .5 else
             1. - float(np.float32(1. - ratio)))
    betas[k] = 1. - alpha  # exact in float32 (Sterbenz)
    product *= alpha
  return betas


def scheduler_config(model, num_timesteps: int) -> dict:
  """The `DDIMScheduler` config (`scheduler/scheduler_config.json`)."""
  betas = trained_betas(alphas_cumprod(model, num_timesteps))
  return {
      '_class_name': 'DDIMScheduler',
      'num_train_timesteps': num_timesteps,
      'trained_betas': betas.tolist(),
      'beta_schedule': 'linear',  # unused: trained_betas
      'prediction_type': prediction_type(model),
      'timestep_spacing': 'trailing',
      'set_alpha_to_one': True,
      'steps_offset': 0,
      'clip_sample': bool(model.clip_x),
      'clip_sample_range': 1.0,
      'thresholding': False,
      'rescale_betas_zero_snr': False,
  }


def timestep_table(model, num_timesteps: int) -> np.ndarray:
  """(T, ch): row k is our network's sinusoidal embedding at t = (k + 1) / T
  (the input of `dense0`), diffusers' learned `time_proj` table."""
  net = model.network
  logsnr = model.logsnr_schedule('eval')(grid_times(num_timesteps))
  logsnr_input = unet_lib.logsnr_to_input(logsnr, net.logsnr_input_type,
                                          net.logsnr_scale_range)
  return np.asarray(unet_lib.timestep_embedding(logsnr_input, net.ch,
                                                max_time=1.), np.float32)


# --- the folder --------------------------------------------------------------


def folder(model, params, *, num_steps: int, distilled: bool) -> dict:
  """{path in the folder: bytes}, in the order to write them (the UNet's
  config last: `from_pretrained` reads it first).

  Args:
    model: the `DiffusionModel`.
    params: its parameter tree (numpy or jax arrays).
    num_steps: the student's step count (a teacher's default one).
    distilled: a student (True) or the teacher.
  """
  check_exportable(model, distilled, num_steps)
  if imported(model):  # its own UNet and timesteps, back as they came
    num_timesteps = len(model.timestep_logsnrs)
    state = diffusers_weights.imported_state_dict(params)
    unet = dict(model.network.unet.settings, _class_name='UNet2DModel',
                sample_size=model.data_shape[0])
  else:
    num_timesteps = num_train_timesteps(num_steps)
    state = diffusers_weights.state_dict(
        model, params, timestep_table(model, num_timesteps))
    unet = unet_config(model, num_timesteps)
  weights = safetensors.numpy.save(state, metadata={'format': 'pt'})
  return {
      'unet/diffusion_pytorch_model.safetensors': weights,
      'scheduler/scheduler_config.json': _json(
          scheduler_config(model, num_timesteps)),
      'README.md': model_card(model, num_steps, distilled).encode(),
      'unet/config.json': _json(unet),
  }


def _json(value) -> bytes:
  return (json.dumps(value, indent=2) + '\n').encode()


def model_card(model, num_steps: int, distilled: bool) -> str:
  """README.md: what the folder holds and how diffusers samples it as we
  do."""
  what = (f'the {num_steps}-step distilled student' if distilled else
          f'the teacher (its default: {num_steps} steps)')
  labels = ''
  if model.num_classes > 1:
    extra_class = getattr(model.network, 'extra_class', False)
    shift = ' + 1 (0: no class)' if extra_class else ''
    labels = f', class_labels=y{shift}'
  clip = (', use_clipped_model_output=True' if model.clip_x else '')
  return f"""# {what}, exported by diffusion_distillation

A diffusers `UNet2DModel` (`unet/`) and `DDIMScheduler` (`scheduler/`).
DDIM with `set_timesteps({num_steps})` steps through our grid t = i / {num_steps}
and gives our sampler's images from the same initial noise (float32 rounding
apart):

```python
import torch
from diffusers import DDIMScheduler, UNet2DModel

unet = UNet2DModel.from_pretrained(FOLDER, subfolder='unet')
scheduler = DDIMScheduler.from_pretrained(FOLDER, subfolder='scheduler')
scheduler.set_timesteps({num_steps})
x = torch.randn(16, unet.config.in_channels, {model.data_shape[0]}, \
{model.data_shape[1]})
for t in scheduler.timesteps:
  out = unet(x, t{labels}).sample
  x = scheduler.step(out, t, x{clip}).prev_sample
images = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
```

The timestep is an index into a table of our logSNR embedding
(`time_embedding_type='learned'`), so only the scheduler's integer timesteps
are meaningful inputs; images are NCHW in [-1, 1].
"""
