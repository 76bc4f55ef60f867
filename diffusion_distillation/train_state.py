"""All training state in one pytree, and the optimizer that updates it."""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


class TrainState(flax.struct.PyTreeNode):
  """Everything a training or distillation stage needs to resume exactly.

  `num_sample_steps` is the number of sampler steps the model is trained for:
  the base model's `train_num_steps` (0 = continuous time), or the student's
  step count during distillation. It is data, not a static value, so all
  distillation stages share one compiled update.
  """
  step: jnp.ndarray
  params: Any
  ema_params: Any
  opt_state: Any
  num_sample_steps: jnp.ndarray


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
                   weight_decay: float, b1: float = 0.9, b2: float = 0.999,
                   skip_nonfinite: bool = False):
  """Adam with decoupled weight decay after global-norm clipping.

  With `skip_nonfinite`, an update whose gradients hold NaN or Inf leaves the
  parameters unchanged (the official `enable_update_skip`).
  """
  tx = optax.chain(
      optax.clip_by_global_norm(grad_clip),
      optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay))
  if skip_nonfinite:
    tx = optax.apply_if_finite(tx, max_consecutive_errors=1_000_000)
  return tx


def create(params, tx, num_sample_steps: int) -> TrainState:
  """A fresh state at step 0; EMA starts as a copy of the parameters.

  Both are fresh copies, so donating the state never frees a buffer the caller
  still uses (e.g. the teacher's parameters during distillation).
  """
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=jax.tree.map(jnp.array, params),
      ema_params=jax.tree.map(jnp.array, params),
      opt_state=tx.init(params),
      num_sample_steps=jnp.asarray(num_sample_steps, jnp.int32))


def update_ema(ema_params, params, decay, step):
  """EMA of parameters; the first update copies (decay 0 at step 0)."""
  decay = jnp.where(step == 0, 0., decay)
  return jax.tree.map(lambda e, p: decay * e + (1. - decay) * p, ema_params,
                      params)
