"""Ties the UNet to the diffusion maths: build, initialize, apply and sample.

A `DiffusionModel` is a small, hashable description (network + how to read its
output + schedules); every method is a pure function of explicit parameters,
so the same object serves training, distillation, sampling and evaluation.

Guided runs (classifier-free guidance, `model.cond_drop_prob` > 0) add a "no
class" label -1 (row 0 of `class_emb`, the authors' `extra_class`); with a
`guidance` config section (guided distillation, Meng et al., 2023) the
network also has the w input of the students (`w_dense0`, `w_dense1`), and
`student()` is the model whose parameters take it. Every model
of one run shares one parameter tree: the teacher never calls its w layers.
"""

import dataclasses
import functools
import math
from typing import Optional, Union

import jax
import jax.numpy as jnp

from diffusion_distillation.config import choices
from diffusion_distillation.config import ConfigError
from diffusion_distillation.diffusion import guidance as guidance_lib
from diffusion_distillation.diffusion import sampling
from diffusion_distillation.diffusion import schedules
from diffusion_distillation.models import diffusers_network
from diffusion_distillation.models import diffusers_schedule
from diffusion_distillation.models import unet as unet_lib


# The students' w layers (the authors' `w_unet3` names).
W_LAYERS = ('w_dense0', 'w_dense1')


def out_channels(mean_type: str, data_channels: int) -> int:
  """'both' predicts x and eps, so it needs twice the data channels."""
  return 2 * data_channels if mean_type == 'both' else data_channels


def normalize_images(images):
  """[0, 255] -> [-1, 1], the data range of the diffusion process."""
  return images / 127.5 - 1.


def unnormalize_images(x):
  """[-1, 1] -> [0, 255], clipped."""
  return jnp.clip((x + 1.) * 127.5, 0., 255.)


def _unet(config, data_shape, num_classes, dropout):
  """Our UNet (models/unet.py) as `config.model.args` describe it."""
  args = dict(config.model.args)
  if dropout is not None:
    args['dropout'] = dropout
  by_size = choices.shape_for_size(data_shape[0])  # () / None: these
  args['ch_mult'] = tuple(args['ch_mult'] or by_size[0])
  attention = args['attn_resolutions']
  args['attn_resolutions'] = tuple(by_size[1] if attention is None
                                   else attention)
  w_input = config.guidance.w_input_type if 'guidance' in config else None
  return unet_lib.UNet(
      num_classes=num_classes, extra_class=config.model.cond_drop_prob > 0,
      out_ch=out_channels(config.model.mean_type, data_shape[-1]),
      dtype=config.model.dtype, w_input_type=w_input,
      remat=config.model.remat, remat_policy=config.model.remat_policy,
      **args)


def _imported_network(config, data_shape, num_classes, dropout):
  """The UNet of the diffusers folder in the teacher's path
  (`model.architecture = 'diffusers'`, docs/diffusers.md)."""
  path = config.distillation.teacher_checkpoint_path
  try:
    return diffusers_network.from_folder(path, config.model.mean_type,
                                         data_shape, num_classes, dropout)
  except (OSError, ValueError) as e:
    raise ConfigError(f'config.distillation.teacher_checkpoint_path: {path}: '
                      f'{e}') from None


@dataclasses.dataclass(frozen=True)
class DiffusionModel:
  """A denoising network plus what is needed to train and sample it."""
  network: Union[unet_lib.UNet, diffusers_network.ImportedNetwork]
  data_shape: tuple
  num_classes: int
  mean_type: str
  weight_type: str
  train_num_steps: int
  train_schedule: tuple  # (name, logsnr_min, logsnr_max): hashable for jit
  eval_schedule: tuple
  clip_x: bool
  variance: str
  # Trained with label dropout (`model.cond_drop_prob` > 0): it has the "no
  # class" label, and the teacher samples at any guidance w.
  guided: bool = False
  w_range: Optional[tuple] = None  # (w_min, w_max) of guided distillation
  w_conditioned: bool = False  # these parameters take w (see `student`)
  w_const: float = 0.  # a w-conditioned student's w when none is given
  # The teacher takes w too: stage two from a stage-one student (no stage
  # one here, `guidance.num_updates` = 0).
  w_teacher: bool = False
  # An imported diffusers teacher's discrete noise levels (logSNR at each
  # of its timesteps): then they are the schedule, train and eval.
  timestep_logsnrs: Optional[tuple] = None
  # Consistency distillation: the run's (sigma_min, sigma_max), and whether
  # these parameters are its student's, a consistency model (see `student`).
  consistency_sigmas: Optional[tuple] = None
  consistency: bool = False

  @classmethod
  def from_config(cls, config, data_shape, num_classes,
                  dropout: Optional[float] = None) -> 'DiffusionModel':
    """Builds the model a config describes; `dropout` overrides the config's."""
    if config.model.architecture == 'diffusers':
      network = _imported_network(config, data_shape, num_classes, dropout)
    else:
      network = _unet(config, data_shape, num_classes, dropout)
    w_range = ((float(config.guidance.w_min), float(config.guidance.w_max))
               if 'guidance' in config else None)
    w_const = float(config.guidance.w_const) if w_range else 0.
    w_teacher = bool(w_range) and config.guidance.num_updates == 0
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
        variance=config.model.logvar_type,
        guided=config.model.cond_drop_prob > 0,
        w_range=w_range,
        w_const=w_const,
        w_teacher=w_teacher,
        timestep_logsnrs=getattr(network, 'logsnrs', None),
        consistency_sigmas=(float(config.consistency.sigma_min),
                            float(config.consistency.sigma_max))
        if 'consistency' in config else None)

  @property
  def null_label(self) -> int:
    """The "no class" label of a guided model (its unconditional input): -1,
    which the network's label shift (`extra_class`) maps to row 0."""
    return -1

  def student(self) -> 'DiffusionModel':
    """The model of this run's distilled students: w-conditioned if guided,
    a consistency model if consistency-distilled."""
    return dataclasses.replace(
        self, w_conditioned=self.w_range is not None,
        consistency=self.consistency_sigmas is not None)

  def sampled(self, distilled: bool) -> 'DiffusionModel':
    """The model that samples a student's (`distilled`) or the teacher's
    parameters: w-conditioned for students of guided distillation, and for
    a teacher that is one (`w_teacher`)."""
    return self.student() if distilled or self.w_teacher else self

  def without_w_layers(self) -> 'DiffusionModel':
    """This model without the students' w layers: the parameter tree of a
    guided teacher trained by a config without a guidance section."""
    return dataclasses.replace(
        self, network=self.network.clone(w_input_type=None), w_range=None)

  def add_w_layers(self, params, rng):
    """`params` of `without_w_layers()` plus freshly initialized w layers
    (`W_LAYERS`, default init as the authors': the w warm-up of stage one,
    `guidance.w_warmup_steps`, starts the student as the teacher)."""
    fresh = jax.jit(self.init_params)(rng)
    return dict(params, **{name: fresh[name] for name in W_LAYERS})

  def check_guidance(self, w: float, *, student: bool):
    """Raises GuidanceError unless the student (or teacher) serves guidance w.

    A w-conditioned student serves its trained range only; a guided teacher
    any w (guidance is arithmetic on its two predictions).
    """
    if student or self.w_teacher:
      w_range = self.w_range
      what = ("this run's students" if student else
              'the teacher (a stage-one student)')
      reason = ('the config has no guidance section: they were distilled '
                'without guidance')
    else:
      w_range = (-math.inf, math.inf) if self.guided else None
      what = 'the teacher'
      reason = 'it was trained without label dropout, model.cond_drop_prob = 0'
    guidance_lib.check_w(w, w_range, what, reason)

  def logsnr_schedule(self, which: str = 'train'):
    if self.timestep_logsnrs is not None:
      return functools.partial(diffusers_schedule.logsnr_at,
                               logsnrs=self.timestep_logsnrs)
    name, lo, hi = self.train_schedule if which == 'train' else (
        self.eval_schedule)
    return schedules.get_logsnr_schedule(name, logsnr_min=lo, logsnr_max=hi)

  def init_params(self, rng):
    """Parameters for one example batch shape (the same on every host)."""
    x = jnp.zeros((1, *self.data_shape), jnp.float32)
    w = jnp.zeros((1,), jnp.float32) if self.w_range else None
    return self.network.init(
        {'params': rng}, x, jnp.zeros((1,), jnp.float32),
        jnp.zeros((1,), jnp.int32), train=False, w=w)['params']

  def bind(self, params, labels, *, train: bool = False, dropout=None,
           guidance=None, w_warmup=1.):
    """Returns `model_fn(z, logsnr)` with parameters and labels fixed.

    `guidance` (None, a scalar or shape (B,)) is the guidance strength w: a
    w-conditioned student takes it as an input (one evaluation), a guided
    teacher combines its conditional and unconditional predictions (two).
    `w_warmup` scales a student's w embedding (stage one's warm-up).
    `dropout`: with `train`, the `microbatches.BatchKey` of the network's
    dropout masks (and the rows of the batch computed).
    """
    rngs = {'dropout': dropout.key} if train else None
    rows = dropout.rows if train else None

    def apply(z, logsnr, y, w=None):
      return self.network.apply({'params': params}, z, logsnr, y, w=w,
                                w_warmup=w_warmup, train=train, rngs=rngs,
                                microbatch=rows)

    if guidance is None:
      if self.w_conditioned:
        raise ValueError('a w-conditioned student needs a guidance strength')
      return lambda z, logsnr: apply(z, logsnr, labels)
    w = jnp.broadcast_to(jnp.asarray(guidance, jnp.float32), labels.shape)
    if self.w_conditioned:
      return lambda z, logsnr: apply(z, logsnr, labels, w)
    return guidance_lib.guided_model_fn(apply, labels, self.null_label, w)

  def generate(self, params, keys, labels, *, num_steps, sampler: str = 'ddim',
               batch_sharding=None, guidance=None):
    """Samples images in [0, 255] (float) for the given labels.

    `keys`: one PRNG key per image, [B, 2]: an image depends on its own key
    (and label) only, not on the batch it is drawn in. `labels` has shape
    (B,) (zeros when unconditional). `batch_sharding` splits the batch over
    devices; without it XLA would run the whole batch on every device.
    `guidance`: see `bind`.
    """
    keys_init, keys_loop = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)
    z = jax.vmap(lambda key: jax.random.normal(key, self.data_shape))(
        keys_init)
    if batch_sharding is not None:
      z = jax.lax.with_sharding_constraint(z, batch_sharding)
    x = sampling.sample_loop(
        self.bind(params, labels, guidance=guidance), z, num_steps=num_steps,
        logsnr_schedule_fn=self.logsnr_schedule('eval'),
        mean_type=self.mean_type, sampler=sampler, clip_x=self.clip_x,
        variance=self.variance, rng=keys_loop,
        consistency=self.consistency_sigmas if self.consistency else None)
    return unnormalize_images(x)
