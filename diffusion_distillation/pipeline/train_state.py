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

  `ema_params` is None in a stage whose EMA decay is 0 (the paper's
  distillation): such an average would be the parameters, so no memory is
  spent on it; `averaged_params` is then the parameters.

  `target_params` is the moving copy of the parameters that some objectives
  learn against (`Objective.target_decay`: TRACT's self-teacher, the target
  network of consistency distillation), with its own decay; None otherwise.
  """
  step: jnp.ndarray
  params: Any
  ema_params: Any
  opt_state: Any
  num_sample_steps: jnp.ndarray
  target_params: Any = None

  @property
  def averaged_params(self):
    """The parameters the stage's model samples with: the EMA's."""
    return self.params if self.ema_params is None else self.ema_params


def create(params, tx, num_sample_steps: int, *, average: bool = True,
           target: bool = False) -> TrainState:
  """A fresh state at step 0; the EMA (with `average`) and the target (with
  `target`) start as copies of the parameters.

  Both are fresh copies, so donating the state never frees a buffer the caller
  still uses (e.g. the teacher's parameters during distillation).
  """
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=jax.tree.map(jnp.array, params),
      ema_params=jax.tree.map(jnp.array, params) if average else None,
      opt_state=tx.init(params),
      num_sample_steps=jnp.asarray(num_sample_steps, jnp.int32),
      target_params=jax.tree.map(jnp.array, params) if target else None)


def with_average(state: TrainState, average: bool) -> TrainState:
  """`state` with an EMA (a copy of the parameters if it had none) or
  without; for a state or its abstract shapes. Checkpoints written before
  EMA-less stages hold an EMA equal to the parameters when the decay is 0."""
  if average == (state.ema_params is not None):
    return state
  if not average:
    return state.replace(ema_params=None)
  copy = lambda x: jnp.array(x) if isinstance(x, jax.Array) else x
  return state.replace(ema_params=jax.tree.map(copy, state.params))


def update_ema(ema_params, params, decay, step):
  """EMA of parameters; the first update copies (decay 0 at step 0)."""
  decay = jnp.where(step == 0, 0., decay)
  return jax.tree.map(lambda e, p: decay * e + (1. - decay) * p, ema_params,
                      params)


def follow(average, params, decay):
  """One EMA update, `decay * average + (1 - decay) * params`, from the start
  (a target network: unlike `update_ema`, step 0 does not copy)."""
  return jax.tree.map(lambda a, p: decay * a + (1. - decay) * p, average,
                      params)
