"""All training state in one pytree."""

from typing import Any

import flax
import jax
import jax.numpy as jnp


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
