"""What optimizes a stage: optax optimizer, learning rate, EMA, dropout.

The official `Model.make_optimizer_def` and `step_fn` (google-research
diffusion_distillation/model.py) define the semantics ported here: Adam,
momentum or Nesterov momentum (flax.optim), gradient clipping by global norm,
and an average of the parameters (`ema_decay`, else `avg_type`/`avg_steps`).
"""

import dataclasses
from typing import Callable, Optional, Union

import jax.numpy as jnp
import optax

from diffusion_distillation.config import OPTIMIZERS
from diffusion_distillation.models import diffusion_model as model_lib
from diffusion_distillation.pipeline import train_state
from diffusion_distillation.pipeline.stages import Context
from diffusion_distillation.pipeline.stages import Stage


def learning_rate_schedule(peak: float, *, warmup_steps: int = 0,
                           anneal_steps: int = 0) -> optax.Schedule:
  """Linear warmup from 0 (base training) or linear decay to 0 (distillation).

  The official configs declare both (learning_rate_warmup_steps and a linear
  anneal within each distillation stage).
  """
  if anneal_steps:
    return optax.linear_schedule(peak, 0., anneal_steps)
  if warmup_steps:
    return optax.linear_schedule(0., peak, warmup_steps)
  return optax.constant_schedule(peak)


def make_optimizer(schedule: optax.Schedule, *, grad_clip: Optional[float],
                   weight_decay: float, b1: float = 0.9, b2: float = 0.999,
                   optimizer: str = 'adam', beta: float = 0.9):
  """The official optimizer after global-norm clipping (`grad_clip=None`: the
  update clips per device itself, see update.py).

  'adam' is flax.optim.Adam: decoupled weight decay (`param -= lr * wd *
  param`), as optax.adamw. 'momentum' and 'nesterov' are flax.optim.Momentum:
  the weight decay is added to the gradient before the momentum (`grad += wd *
  param`; m = beta * m + grad; step = m, or grad + beta * m for Nesterov),
  as optax's add_decayed_weights then sgd.
  """
  if optimizer == 'adam':
    tx = optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay)
  elif optimizer in ('momentum', 'nesterov'):
    tx = optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.sgd(schedule, momentum=beta, nesterov=optimizer == 'nesterov'))
  else:
    raise ValueError(f'unknown optimizer {optimizer!r}; known: {OPTIMIZERS}')
  clip = (optax.identity() if grad_clip is None else
          optax.clip_by_global_norm(grad_clip))
  return optax.chain(clip, tx)


def ema_decay_schedule(ema_decay: Optional[float], avg_type: str = '',
                       avg_steps: int = 0) -> Callable:
  """`step -> decay` of the parameter average updated after step `step`.

  As the official `step_fn`: a set `ema_decay` takes precedence; else
  avg_type 'ema' decays by 1 - 1 / avg_steps, and 'aa' is the arithmetic mean
  of the parameters since the last multiple of `avg_steps` (decay t / (t + 1)
  with t = step % avg_steps, so it restarts every avg_steps steps); no average
  (decay 0) otherwise. `train_state.update_ema` copies at step 0 in any case.
  """
  if ema_decay is not None:
    return lambda step: ema_decay
  if avg_type == 'ema':
    return lambda step: 1. - 1. / avg_steps
  if avg_type == 'aa':

    def arithmetic(step):
      t = (step % avg_steps).astype(jnp.float32)
      return t / (t + 1.)

    return arithmetic
  return lambda step: 0.


@dataclasses.dataclass(frozen=True)
class Optimization:
  """What differs between base training and a distillation stage."""
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  ema_decay: Callable[[jnp.ndarray], Union[float, jnp.ndarray]]  # of step
  dropout: float
  skip_nonfinite: bool  # train.enable_update_skip (see update.py)
  clip_per_device: Optional[float] = None  # train.grad_clip_per_device
  num_microbatches: int = 1  # train.num_microbatches
  keeps_average: bool = True  # False: the EMA decay is always 0
  # `step -> decay` of the objective's target (`Objective.target_decay`);
  # None: the state has no target.
  target_decay: Optional[Callable[[jnp.ndarray], jnp.ndarray]] = None

  def init_state(self, params, num_sample_steps) -> train_state.TrainState:
    """A fresh state for this optimization: its optimizer state, and an EMA
    and a target where it keeps them."""
    return train_state.create(params, self.tx, num_sample_steps,
                              average=self.keeps_average,
                              target=self.target_decay is not None)


def optimization_for(config, stage: Stage) -> Optimization:
  """Base: warmup, EMA, dropout. Distillation: linear anneal per stage;
  an objective whose `settings` are 'guidance' (stage one of guided
  distillation): that section's rate, decay and EMA (the authors' stage-one
  configs: constant 3e-4, EMA 0.9999)."""
  t = config.train
  settings = stage.settings
  if settings != 'train':
    d = config.distillation
    own = config[settings]
    anneal = (stage.num_updates if own.learning_rate_anneal_type == 'linear'
              else 0)
    schedule = learning_rate_schedule(own.learning_rate, anneal_steps=anneal)
    weight_decay, ema_decay, dropout = d.weight_decay, own.ema_decay, d.dropout
  else:
    schedule = learning_rate_schedule(
        t.learning_rate, warmup_steps=t.learning_rate_warmup_steps)
    weight_decay, ema_decay = t.weight_decay, t.ema_decay
    dropout = config.model.args.dropout
  per_device = t.grad_clip_per_device
  tx = make_optimizer(schedule, grad_clip=None if per_device else t.grad_clip,
                      weight_decay=weight_decay, b1=t.adam_beta1,
                      b2=t.adam_beta2, optimizer=t.optimizer,
                      beta=t.optimizer_beta)
  average = ema_decay_schedule(ema_decay, t.avg_type, t.avg_steps)
  keeps_average = (ema_decay != 0. if ema_decay is not None else
                   bool(t.avg_type))
  return Optimization(tx, schedule, average, dropout, t.enable_update_skip,
                      t.grad_clip if per_device else None, t.num_microbatches,
                      keeps_average, stage.target_decay(config))


def stage_model(ctx: Context, opt: Optimization) -> model_lib.DiffusionModel:
  """The run's model with the dropout of this stage's optimization."""
  return model_lib.DiffusionModel.from_config(
      ctx.config, ctx.base_model.data_shape, ctx.base_model.num_classes,
      dropout=opt.dropout)
