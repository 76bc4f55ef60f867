"""The loss on the eval split with the EMA parameters, during training.

The official `Model.step_fn(train=False)` evaluates the training (or
distillation) loss with `state.ema_params` and no dropout; its configs ask for
it every `train.eval_every_steps` updates (0 here: never). Each evaluation
covers the whole eval split once, in global batches of `train.batch_size`
(the last one padded and masked), and its randomness is a function of the
stage and the step only (`fold_in(eval_key, step)`, then the batch index), so
a resumed run writes the same values as an uninterrupted one. The value goes
to TensorBoard as `eval/loss` and to the log.
"""

import math
from typing import Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_distillation.parallel import sharding
from diffusion_distillation.pipeline import optimization
from diffusion_distillation.pipeline.stages import Context
from diffusion_distillation.pipeline.stages import Stage


class EvalLoss:
  """`after(...)` evaluates when an update call crossed a multiple of
  `train.eval_every_steps`; `loss(...)` evaluates now."""

  def __init__(self, ctx: Context, stage: Stage):
    self.every = ctx.config.train.eval_every_steps
    self._ctx, self._stage, self._fn = ctx, stage, None
    stage_key = jax.random.fold_in(jax.random.PRNGKey(ctx.config.seed),
                                   stage.index)
    # A stream apart from the updates' fold_in(stage_key, step).
    self._key = jax.random.split(stage_key)[1]

  def after(self, step: int, n: int, state, teacher, writer) -> Optional[float]:
    """After `n` updates that ended at `step`: evaluate if one was due."""
    if not self.every or step // self.every == (step - n) // self.every:
      return None
    value = self.loss(state.averaged_params, teacher, step,
                      state.target_params)
    writer.write_scalars(step, {'eval/loss': value})
    logging.info('%s step %d: eval/loss %.6g', self._stage.name, step, value)
    return value

  def loss(self, params, teacher, step: int, target=None) -> float:
    """The mean loss of `params` over the eval split at `step`'s randomness
    (`target`: the state's `target_params`, for objectives that have one)."""
    if self._fn is None:
      self._fn = self._compile()
    rng = jax.random.fold_in(self._key, step)
    total = count = jnp.zeros((), jnp.float32)
    for i, (batch, mask) in enumerate(self._batches()):
      batch_total, batch_count = self._fn(
          params, sharding.global_batch(batch, self._ctx.mesh),
          sharding.global_batch(mask, self._ctx.mesh),
          jax.random.fold_in(rng, i), teacher, target)
      total, count = total + batch_total, count + batch_count
    return float(sharding.to_host(total)) / float(sharding.to_host(count))

  def _compile(self):
    ctx, stage = self._ctx, self._stage
    opt = optimization.optimization_for(ctx.config, stage)
    model = optimization.stage_model(ctx, opt)
    objective = stage.objective_for(model)
    num_steps = stage.num_sample_steps

    def sums(params, batch, mask, rng, teacher, target):
      per_example = objective.loss(
          params, teacher, batch, objective.draw(rng, batch, num_steps),
          num_steps=num_steps, train=False, target_params=target)
      return jnp.sum(per_example * mask), jnp.sum(mask)

    rep, split = (sharding.replicated(ctx.mesh),
                  sharding.batch_sharding(ctx.mesh))
    return jax.jit(sums, in_shardings=(rep, split, split, rep, rep, rep),
                   out_shardings=rep)

  def _batches(self):
    """This process's share of the eval split: equal counts of batches of
    `train.batch_size / process_count` examples, zero-padded, with masks."""
    dataset = self._ctx.dataset
    processes = jax.process_count()
    local = self._ctx.config.train.batch_size // processes
    num_batches = math.ceil(math.ceil(dataset.num_eval / processes) / local)
    batches = dataset.eval_batches(batch_size=local,
                                   process_index=jax.process_index(),
                                   process_count=processes)
    for _ in range(num_batches):
      batch = next(batches, None)
      size = 0 if batch is None else len(batch['label'])
      padded = {
          'image': np.zeros((local, *dataset.data_shape), np.float32),
          'label': np.zeros((local,), np.int32)}
      if size:
        padded['image'][:size] = batch['image']
        padded['label'][:size] = batch['label']
      yield padded, (np.arange(local) < size).astype(np.float32)
