"""The compiled update: loss, gradients, optimizer, EMA in one program."""

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

from diffusion_distillation.objectives import Objective
from diffusion_distillation.parallel import microbatches
from diffusion_distillation.parallel import sharding
from diffusion_distillation.pipeline import train_state
from diffusion_distillation.pipeline.optimization import Optimization


def make_train_steps(objective: Objective, opt: Optimization):
  """Returns `train_steps(state, batches, teacher_params, key) -> (state,
  metrics)`; step k's randomness is `fold_in(key, k)`.

  The stage's key, like its sampler step count (in the state), is data, so
  one compiled program serves every stage of an objective (see
  `loop._compiled_update`).

  `batches` stacks several steps' batches on a leading axis; they run in one
  `lax.scan`, one update each (`train.substeps` per call saves dispatch on
  TPU). A single step runs without a loop: XLA:CPU executes gradient
  convolutions inside loops about 15x slower, so CPU configs use substeps=1.
  The teacher's forward passes happen inside the same program, without
  gradients.
  """

  def one_step(state, batch, teacher_params, key):
    num_steps, step = state.num_sample_steps, state.step

    def grads(params, batch, rng, teachers):
      """1. every random draw of the batch; 2. the loss and its gradient,
      in microbatches that slice the batch and the draws."""
      teacher, target = teachers
      draws = objective.draw(rng, batch, num_steps)
      return microbatches.value_and_grad(
          lambda p, inputs: objective.loss(
              p, teacher, inputs['batch'], inputs['draws'],
              num_steps=num_steps, step=step, target_params=target),
          opt.num_microbatches)(params, {'batch': batch, 'draws': draws})

    rng = jax.random.fold_in(key, step)
    # The frozen teacher and the student's target: neither is trained.
    teachers = jax.lax.stop_gradient((teacher_params, state.target_params))
    if opt.clip_per_device is None:
      loss, grads = grads(state.params, batch, rng, teachers)
      grad_norm = optax.tree.norm(grads)
    else:
      loss, grads, grad_norm = per_device_clipped_grads(
          grads, opt.clip_per_device)(state.params, batch, rng, teachers)
    updates, opt_state = opt.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {'loss': loss, 'grad_norm': grad_norm,
               'learning_rate': jnp.asarray(opt.schedule(step), jnp.float32)}
    new_state = _advance(state, params, opt_state, opt)
    if opt.skip_nonfinite:
      new_state, metrics['skipped'] = skip_if_nonfinite(state, new_state)
    return new_state, metrics

  def train_steps(state, batches, teacher_params, key):
    if jax.tree.leaves(batches)[0].shape[0] == 1:  # no loop: see below
      state, metrics = one_step(state, jax.tree.map(lambda b: b[0], batches),
                                teacher_params, key)
      return state, jax.tree.map(lambda m: m[None], metrics)
    return jax.lax.scan(lambda s, b: one_step(s, b, teacher_params, key),
                        state, batches)

  return train_steps


def _advance(state, params, opt_state, opt: Optimization):
  """The state after an update to `params`: the step, the optimizer's
  state, and the averages that follow the parameters (EMA, target)."""
  step = state.step
  return state.replace(
      step=step + 1, params=params, opt_state=opt_state,
      ema_params=None if state.ema_params is None else
      train_state.update_ema(state.ema_params, params, opt.ema_decay(step),
                             step),
      target_params=None if state.target_params is None else
      train_state.follow(state.target_params, params,
                         opt.target_decay(step)))


def clip_by_global_norm(tree, clip_norm):
  """(tree scaled to global norm <= clip_norm, its norm before clipping).

  The official `utils.clip_by_global_norm` formula: scale = clip_norm *
  min(1 / norm, 1 / clip_norm).
  """
  norm = optax.tree.norm(tree)
  scale = clip_norm * jnp.minimum(1. / norm, 1. / clip_norm)
  return jax.tree.map(lambda x: x * scale, tree), norm


def per_device_clipped_grads(grad_fn, clip_norm, mesh=None):
  """`(params, batch, rng, teachers) -> (loss, grads, grad_norm)`, the
  official `step_fn` way (`train.grad_clip_per_device`).

  Each device of the `data` axis takes the gradient of the loss (`grad_fn`:
  `(params, batch, rng, teachers) -> (loss, grads)`) on its own
  shard of the batch (rng folded with its index, as the official
  `fold_in(rng, axis_index('batch'))`), clips it to `clip_norm` by its own
  global norm, and only then are gradients averaged over devices (`pmean`),
  as are the loss and the norms. With shards of unequal norm this differs
  from clipping the averaged gradient, and depends on the device count.
  `mesh` defaults to `sharding.make_mesh()`, the mesh training runs on.
  """
  mesh = sharding.make_mesh() if mesh is None else mesh
  axis = sharding.DATA_AXIS

  def local(params, batch, rng, teachers):
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis))
    loss, grads = grad_fn(params, batch, rng, teachers)
    grads, norm = clip_by_global_norm(grads, clip_norm)
    return jax.lax.pmean((loss, grads, norm), axis)

  # check_vma=False: with it, JAX would sum the gradients of the replicated
  # parameters over devices inside `value_and_grad`, before the clipping.
  return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(axis), P(), P()),
                       out_specs=P(), check_vma=False)


def all_finite(tree) -> jnp.ndarray:
  """Whether every floating-point value in `tree` is finite (a bool scalar)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.asarray(leaves)) if leaves else jnp.asarray(True)


def skip_if_nonfinite(state, new_state):
  """(state after the update, 1. if it was skipped else 0.).

  The official `enable_update_skip`: an update whose new parameters or
  optimizer moments hold NaN or Inf is dropped, keeping the old parameters,
  optimizer state and EMA; the step still advances.
  """
  ok = all_finite((new_state.params, new_state.opt_state))
  kept = state.replace(step=new_state.step)
  return (jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_state, kept),
          1. - ok.astype(jnp.float32))


def compile_train_steps(train_steps, mesh):
  """jit over the mesh: state replicated and donated, batches split."""
  rep = sharding.replicated(mesh)
  return jax.jit(train_steps,
                 in_shardings=(rep, sharding.batch_sharding(mesh, 1), rep,
                               rep),
                 out_shardings=(rep, rep), donate_argnums=(0,))


def stack_batches(batches):
  """Several steps' host batches stacked on a new leading (step) axis."""
  return jax.tree.map(lambda *xs: np.stack(xs), *batches)


def mean_metrics(metrics) -> dict[str, float]:
  """Host floats: each metric averaged over the steps of one call."""
  return {k: float(np.mean(v)) for k, v in sharding.to_host(metrics).items()}
