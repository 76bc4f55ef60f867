"""The compiled update: loss, gradients, optimizer, EMA in one program."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffusion_distillation.diffusion import losses
from diffusion_distillation.models import diffusion_model as model_lib
from diffusion_distillation.parallel import sharding
from diffusion_distillation.pipeline import train_state
from diffusion_distillation.pipeline.optimization import Optimization


def make_train_steps(model: model_lib.DiffusionModel, opt: Optimization,
                     key, *, distill: bool):
  """Returns `train_steps(state, batches, teacher_params) -> (state, metrics)`.

  `batches` stacks several steps' batches on a leading axis; they run in one
  `lax.scan`, one update each (`train.substeps` per call saves dispatch on
  TPU). A single step runs without a loop: XLA:CPU executes gradient
  convolutions inside loops about 15x slower, so CPU configs use substeps=1.
  The teacher's two forward passes happen inside the same program, without
  gradients.
  """
  schedule_fn = model.logsnr_schedule('train')

  def loss_fn(params, batch, rng, num_steps, teacher_params):
    labels = batch['label']
    rng_loss, rng_dropout = jax.random.split(rng)
    teacher_fn = model.bind(teacher_params, labels) if distill else None
    per_example = losses.diffusion_loss(
        model.bind(params, labels, train=True, rng=rng_dropout),
        model_lib.normalize_images(batch['image']), rng_loss,
        logsnr_schedule_fn=schedule_fn, mean_type=model.mean_type,
        weight_type=model.weight_type, num_steps=num_steps,
        teacher_fn=teacher_fn)
    return per_example.mean()

  def one_step(state, batch, teacher_params):
    rng = jax.random.fold_in(key, state.step)
    num_steps = state.num_sample_steps if distill else model.train_num_steps
    loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, rng,
                                              num_steps, teacher_params)
    updates, opt_state = opt.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {'loss': loss, 'grad_norm': optax.tree.norm(grads),
               'learning_rate': jnp.asarray(opt.schedule(state.step),
                                            jnp.float32)}
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state,
        ema_params=train_state.update_ema(state.ema_params, params,
                                          opt.ema_decay, state.step))
    if opt.skip_nonfinite:
      new_state, metrics['skipped'] = skip_if_nonfinite(state, new_state)
    return new_state, metrics

  def train_steps(state, batches, teacher_params):
    if jax.tree.leaves(batches)[0].shape[0] == 1:  # no loop: see below
      state, metrics = one_step(state, jax.tree.map(lambda b: b[0], batches),
                                teacher_params)
      return state, jax.tree.map(lambda m: m[None], metrics)
    return jax.lax.scan(lambda s, b: one_step(s, b, teacher_params), state,
                        batches)

  return train_steps


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
                 in_shardings=(rep, sharding.batch_sharding(mesh, 1), rep),
                 out_shardings=(rep, rep), donate_argnums=(0,))


def stack_batches(batches):
  """Several steps' host batches stacked on a new leading (step) axis."""
  return jax.tree.map(lambda *xs: np.stack(xs), *batches)


def mean_metrics(metrics) -> dict[str, float]:
  """Host floats: each metric averaged over the steps of one call."""
  return {k: float(np.mean(v)) for k, v in sharding.to_host(metrics).items()}
