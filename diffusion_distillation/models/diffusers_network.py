"""An imported diffusers UNet as the network of a `DiffusionModel`.

Our models call their network as `(z, logsnr, y) -> prediction of the
model's mean_type`. `ImportedNetwork` gives diffusers' UNet that interface:
logSNR becomes diffusers' timestep (`diffusers_schedule.timestep_at`), a
learned variance's extra channels are dropped (DDIM does not use them), and
the scheduler's `prediction_type` is converted to the model's mean_type. The
conversion is what lets an eps teacher's students predict v (eps students
collapse at few steps, Salimans & Ho, 2022): the student starts from the
teacher's weights and, through the conversion, as exactly the teacher.

The parameter tree is the UNet's own, with diffusers' names at its top.
"""

import dataclasses

import jax.numpy as jnp

from diffusion_distillation.diffusion import process
from diffusion_distillation.models import diffusers_folder
from diffusion_distillation.models import diffusers_schedule
from diffusion_distillation.models.diffusers_unet import DiffusersUNet


@dataclasses.dataclass(frozen=True)
class ImportedNetwork:
  """diffusers' UNet behind our network interface (`init`, `apply`)."""
  unet: DiffusersUNet
  logsnrs: tuple  # logSNR at each of diffusers' timesteps
  prediction_type: str  # the scheduler's: what the UNet predicts
  mean_type: str  # the DiffusionModel's: what this network returns

  def __post_init__(self):
    if self.mean_type not in ('eps', 'x', 'v'):
      raise ValueError(f'mean_type {self.mean_type!r}: an imported network '
                       "predicts 'eps', 'x' or 'v'")

  def init(self, rngs, x, logsnr, y, *, train: bool = False, w=None):
    """The UNet's variables (`w` is refused: no guided students here)."""
    del train
    _no_w(w)
    return self.unet.init(rngs, x, self.timesteps(logsnr), y)

  def apply(self, variables, z, logsnr, y, *, train: bool = False, w=None,
            w_warmup=1., rngs=None, microbatch=None):
    """The prediction of `mean_type` at `z`, `logsnr` (B,), labels `y`."""
    del w_warmup
    _no_w(w)
    out = self.unet.apply(variables, z, self.timesteps(logsnr), y,
                          train=train, rngs=rngs, microbatch=microbatch)
    return self.convert(out[..., :z.shape[-1]], z, logsnr)

  def timesteps(self, logsnr):
    return diffusers_schedule.timestep_at(logsnr, self.logsnrs)

  def convert(self, pred, z, logsnr):
    """diffusers' prediction as this network's mean_type."""
    native = diffusers_schedule.MEAN_TYPE_OF[self.prediction_type]
    if native == self.mean_type:
      return pred
    both = process.interpret_output(pred.astype(jnp.float32), z, logsnr,
                                    native)
    return getattr(both, self.mean_type)


def _no_w(w):
  if w is not None:
    raise ValueError('an imported diffusers network takes no guidance w')


def from_folder(path, mean_type: str, data_shape, num_classes: int,
                dropout=None) -> ImportedNetwork:
  """The network of the diffusers folder at `path`, for data of
  `data_shape` with `num_classes` classes (1: unconditional); `dropout`, if
  given, replaces the UNet's.

  Raises:
    ValueError: the folder cannot be read, holds a setting the import cannot
      honour, or does not fit the data; one line, naming what.
  """
  unet_config, scheduler_config = diffusers_folder.read_configs(path)
  if dropout is not None:
    unet_config = dict(unet_config, dropout=dropout)
  unet = DiffusersUNet.from_config(unet_config)
  settings = diffusers_schedule.scheduler_settings(scheduler_config)
  channels = unet.setting('in_channels')
  if data_shape[-1] != channels:
    raise ValueError(f'the data have {data_shape[-1]} channels, the UNet '
                     f'takes in_channels = {channels}')
  if unet.setting('out_channels') not in (channels, 2 * channels):
    raise ValueError(f"out_channels = {unet.setting('out_channels')}: the "
                     f'import needs in_channels ({channels}) or twice that '
                     '(a learned variance, which DDIM does not use)')
  classes = unet.setting('num_class_embeds')
  if (num_classes > 1 or classes is not None) and classes != num_classes:
    raise ValueError(f'the data have {num_classes} classes, the UNet '
                     f'num_class_embeds = {classes}')
  levels = len(unet.setting('block_out_channels')) - 1
  if data_shape[0] % 2 ** levels:
    raise ValueError(f'{data_shape[0]}x{data_shape[1]} images do not halve '
                     f"{levels} times (the UNet's block_out_channels)")
  return ImportedNetwork(unet, diffusers_schedule.timestep_logsnrs(settings),
                         settings['prediction_type'], mean_type)
