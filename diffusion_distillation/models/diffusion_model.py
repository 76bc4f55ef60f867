"""Ties the UNet to the diffusion maths: build, initialize, apply and sample.

A `DiffusionModel` is a small, hashable description (network + how to read its
output + schedules); every method is a pure function of explicit parameters,
so the same object serves training, distillation, sampling and evaluation.
"""

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from diffusion_distillation.diffusion import sampling
from diffusion_distillation.diffusion import schedules
from diffusion_distillation.models import unet as unet_lib


def out_channels(mean_type: str, data_channels: int) -> int:
  """'both' predicts x and eps, so it needs twice the data channels."""
  return 2 * data_channels if mean_type == 'both' else data_channels


def normalize_images(images):
  """[0, 255] -> [-1, 1], the data range of the diffusion process."""
  return images / 127.5 - 1.


def unnormalize_images(x):
  """[-1, 1] -> [0, 255], clipped."""
  return jnp.clip((x + 1.) * 127.5, 0., 255.)


@dataclasses.dataclass(frozen=True)
class DiffusionModel:
  """A denoising network plus what is needed to train and sample it."""
  network: unet_lib.UNet
  data_shape: tuple
  num_classes: int
  mean_type: str
  weight_type: str
  train_num_steps: int
  train_schedule: tuple  # (name, logsnr_min, logsnr_max): hashable for jit
  eval_schedule: tuple
  clip_x: bool
  variance: str

  @classmethod
  def from_config(cls, config, data_shape, num_classes,
                  dropout: Optional[float] = None) -> 'DiffusionModel':
    """Builds the model a config describes; `dropout` overrides the config's."""
    args = dict(config.model.args)
    if dropout is not None:
      args['dropout'] = dropout
    args['ch_mult'] = tuple(args['ch_mult'])
    args['attn_resolutions'] = tuple(args['attn_resolutions'])
    network = unet_lib.UNet(
        num_classes=num_classes,
        out_ch=out_channels(config.model.mean_type, data_shape[-1]),
        dtype=config.model.dtype,
        **args)
    schedule = lambda s: (s.name, float(s.logsnr_min), float(s.logsnr_max))
    return cls(
        network=network,
        data_shape=tuple(data_shape),
        num_classes=num_classes,
        mean_type=config.model.mean_type,
        weight_type=config.model.mean_loss_weight_type,
        train_num_steps=config.model.train_num_steps,
        train_schedule=schedule(config.model.train_logsnr_schedule),
        eval_schedule=schedule(config.model.eval_logsnr_schedule),
        clip_x=config.model.eval_clip_denoised,
        variance=config.model.logvar_type)

  def logsnr_schedule(self, which: str = 'train'):
    name, lo, hi = self.train_schedule if which == 'train' else (
        self.eval_schedule)
    return schedules.get_logsnr_schedule(name, logsnr_min=lo, logsnr_max=hi)

  def init_params(self, rng):
    """Parameters for one example batch shape (the same on every host)."""
    x = jnp.zeros((1, *self.data_shape), jnp.float32)
    return self.network.init(
        {'params': rng}, x, jnp.zeros((1,), jnp.float32),
        jnp.zeros((1,), jnp.int32), train=False)['params']

  def bind(self, params, labels, *, train: bool = False, rng=None):
    """Returns `model_fn(z, logsnr)` with parameters and labels fixed."""
    rngs = {'dropout': rng} if train else None

    def model_fn(z, logsnr):
      return self.network.apply({'params': params}, z, logsnr, labels,
                                train=train, rngs=rngs)

    return model_fn

  def generate(self, params, rng, labels, *, num_steps, sampler: str = 'ddim',
               batch_sharding=None):
    """Samples images in [0, 255] (float) for the given labels.

    `labels` has shape (B,) and fixes the batch size (zeros when
    unconditional). `batch_sharding` splits the batch over devices; without it
    XLA would run the whole batch on every device.
    """
    rng_init, rng_loop = jax.random.split(rng)
    z = jax.random.normal(rng_init, (labels.shape[0], *self.data_shape))
    if batch_sharding is not None:
      z = jax.lax.with_sharding_constraint(z, batch_sharding)
    x = sampling.sample_loop(
        self.bind(params, labels), z, num_steps=num_steps,
        logsnr_schedule_fn=self.logsnr_schedule('eval'),
        mean_type=self.mean_type, sampler=sampler, clip_x=self.clip_x,
        variance=self.variance, rng=rng_loop)
    return unnormalize_images(x)
