"""What optimizes a stage: optax optimizer, learning rate, EMA, dropout."""

import dataclasses

import optax

from diffusion_distillation.models import diffusion_model as model_lib
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


def make_optimizer(schedule: optax.Schedule, *, grad_clip: float,
                   weight_decay: float, b1: float = 0.9, b2: float = 0.999):
  """Adam with decoupled weight decay after global-norm clipping."""
  return optax.chain(
      optax.clip_by_global_norm(grad_clip),
      optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay))


@dataclasses.dataclass(frozen=True)
class Optimization:
  """What differs between base training and a distillation stage."""
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  ema_decay: float
  dropout: float
  skip_nonfinite: bool  # train.enable_update_skip (see update.py)


def optimization_for(config, stage: Stage) -> Optimization:
  """Base: warmup, EMA, dropout. Distillation: linear anneal per stage."""
  t = config.train
  if stage.is_distillation:
    d = config.distillation
    anneal = d.steps_per_iter if d.learning_rate_anneal_type == 'linear' else 0
    schedule = learning_rate_schedule(d.learning_rate,
                                      anneal_steps=anneal)
    weight_decay, ema_decay, dropout = d.weight_decay, d.ema_decay, d.dropout
  else:
    schedule = learning_rate_schedule(
        t.learning_rate, warmup_steps=t.learning_rate_warmup_steps)
    weight_decay, ema_decay = t.weight_decay, t.ema_decay
    dropout = config.model.args.dropout
  tx = make_optimizer(schedule, grad_clip=t.grad_clip,
                      weight_decay=weight_decay, b1=t.adam_beta1,
                      b2=t.adam_beta2)
  return Optimization(tx, schedule, ema_decay, dropout, t.enable_update_skip)


def stage_model(ctx: Context, opt: Optimization) -> model_lib.DiffusionModel:
  """The run's model with the dropout of this stage's optimization."""
  return model_lib.DiffusionModel.from_config(
      ctx.config, ctx.base_model.data_shape, ctx.base_model.num_classes,
      dropout=opt.dropout)
