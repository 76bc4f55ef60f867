"""Teacher training and progressive distillation, stage by stage, resumably.

A run is a list of stages: optionally `base` (train the teacher), then one
`distill_<N>` stage per halving of the sampler steps. Each stage trains one
`TrainState` with a compiled multi-step update and checkpoints under its own
directory; a rerun skips finished stages and resumes the unfinished one from
its last checkpoint. Randomness comes from `fold_in(key, step)` and the digits
data order is a function of the step, so a resumed run ends with exactly the
parameters of an uninterrupted one.
"""

import dataclasses
import json
import signal
import time
from typing import Any, Optional

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffusion_distillation import checkpointing
from diffusion_distillation import config_validation
from diffusion_distillation import datasets
from diffusion_distillation import distributed
from diffusion_distillation import images
from diffusion_distillation import losses
from diffusion_distillation import model as model_lib
from diffusion_distillation import parallel
from diffusion_distillation import sample as sample_lib
from diffusion_distillation import teacher as teacher_lib
from diffusion_distillation import train_state


@dataclasses.dataclass(frozen=True)
class Stage:
  """One training run inside the pipeline."""
  index: int
  name: str
  num_updates: int
  num_sample_steps: int  # base: train_num_steps (0 = continuous); student's N
  is_distillation: bool


def plan_stages(config) -> list[Stage]:
  """Base training (unless the teacher is given), then one stage per halving."""
  stages = []
  distill = config.get('distillation')
  if not (distill and distill.teacher_checkpoint_path):
    stages.append(Stage(0, 'base', config.train.num_train_steps,
                        config.model.train_num_steps, False))
  if distill:
    n = distill.start_num_steps // 2
    while n >= distill.end_num_steps:
      stages.append(Stage(len(stages), checkpointing.distill_stage_name(n),
                          distill.steps_per_iter, n, True))
      n //= 2
  return stages


# --- The compiled update ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Optimization:
  """What differs between base training and a distillation stage."""
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  ema_decay: float
  dropout: float


def optimization_for(config, stage: Stage) -> Optimization:
  """Base: warmup, EMA, dropout. Distillation: linear anneal per stage."""
  t = config.train
  if stage.is_distillation:
    d = config.distillation
    anneal = d.steps_per_iter if d.learning_rate_anneal_type == 'linear' else 0
    schedule = train_state.learning_rate_schedule(d.learning_rate,
                                                  anneal_steps=anneal)
    weight_decay, ema_decay, dropout = d.weight_decay, d.ema_decay, d.dropout
  else:
    schedule = train_state.learning_rate_schedule(
        t.learning_rate, warmup_steps=t.learning_rate_warmup_steps)
    weight_decay, ema_decay = t.weight_decay, t.ema_decay
    dropout = config.model.args.dropout
  tx = train_state.make_optimizer(
      schedule, grad_clip=t.grad_clip, weight_decay=weight_decay,
      b1=t.adam_beta1, b2=t.adam_beta2, skip_nonfinite=t.enable_update_skip)
  return Optimization(tx, schedule, ema_decay, dropout)


def make_train_steps(model: model_lib.DiffusionModel, opt: Optimization,
                     key, *, distill: bool):
  """Returns `train_steps(state, batches, teacher_params) -> (state, metrics)`.

  `batches` stacks several steps' batches on a leading axis; they run in one
  `lax.scan`, one update each (`train.substeps` per call saves dispatch on
  TPU). A single step runs without a loop: XLA:CPU executes gradient
  convolutions inside loops about 15x slower, so CPU configs use substeps=1. The teacher's two forward passes happen inside
  the same program, without gradients.
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
    return state.replace(
        step=state.step + 1, params=params, opt_state=opt_state,
        ema_params=train_state.update_ema(state.ema_params, params,
                                          opt.ema_decay, state.step)), metrics

  def train_steps(state, batches, teacher_params):
    if jax.tree.leaves(batches)[0].shape[0] == 1:  # no loop: see below
      state, metrics = one_step(state, jax.tree.map(lambda b: b[0], batches),
                                teacher_params)
      return state, jax.tree.map(lambda m: m[None], metrics)
    return jax.lax.scan(lambda s, b: one_step(s, b, teacher_params), state,
                        batches)

  return train_steps


def compile_train_steps(train_steps, mesh):
  """jit over the mesh: state replicated and donated, batches split."""
  rep = parallel.replicated(mesh)
  return jax.jit(train_steps,
                 in_shardings=(rep, parallel.batch_sharding(mesh, 1), rep),
                 out_shardings=(rep, rep), donate_argnums=(0,))


# --- Preemption ---------------------------------------------------------------

_PREEMPTED = False


def _on_sigterm(signum, frame):
  del signum, frame
  global _PREEMPTED
  _PREEMPTED = True
  logging.warning('SIGTERM received: saving a checkpoint after this update.')


def install_preemption_handler():
  """SIGTERM (preemption) saves a checkpoint and exits; rerun to resume."""
  signal.signal(signal.SIGTERM, _on_sigterm)


def preempted() -> bool:
  """Whether any process was asked to stop (agreed across processes)."""
  if jax.process_count() == 1:
    return _PREEMPTED
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  flags = multihost_utils.process_allgather(np.asarray([_PREEMPTED]))
  return bool(np.any(flags))


class Preempted(SystemExit):
  """Raised after a preemption checkpoint is written."""


# --- Running a stage ----------------------------------------------------------


@dataclasses.dataclass
class Context:
  """What every stage of one run shares."""
  config: Any
  workdir: epath.Path
  mesh: Any
  dataset: Any
  base_model: model_lib.DiffusionModel


def _stage_model(ctx: Context, opt: Optimization):
  return model_lib.DiffusionModel.from_config(
      ctx.config, ctx.base_model.data_shape, ctx.base_model.num_classes,
      dropout=opt.dropout)


def abstract_state(ctx: Context, stage: Stage):
  """The shapes and shardings of a stage's TrainState, for restoring."""
  opt = optimization_for(ctx.config, stage)
  rep = parallel.replicated(ctx.mesh)
  shapes = jax.eval_shape(
      lambda: train_state.create(
          ctx.base_model.init_params(jax.random.PRNGKey(0)), opt.tx,
          stage.num_sample_steps))
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), shapes)


def final_params(ctx: Context, stage: Stage):
  """The EMA parameters of a finished stage (its final checkpoint)."""
  manager = checkpointing.StageCheckpoints(
      checkpointing.stage_dir(ctx.workdir, stage.name), read_only=True)
  state, _ = manager.restore(abstract_state(ctx, stage))
  manager.close()
  return state.ema_params


def _stack(batches):
  return jax.tree.map(lambda *xs: np.stack(xs), *batches)


def _mean_metrics(metrics) -> dict[str, float]:
  return {k: float(np.mean(v)) for k, v in parallel.to_host(metrics).items()}


def run_stage(ctx: Context, stage: Stage, teacher_params) -> dict[str, Any]:
  """Trains one stage to its end (or to preemption); returns its meta record.

  `teacher_params` are the frozen teacher's for distillation (also the
  student's initialization), None for base training.
  """
  config = ctx.config
  opt = optimization_for(config, stage)
  model = _stage_model(ctx, opt)
  manager = checkpointing.StageCheckpoints(
      checkpointing.stage_dir(ctx.workdir, stage.name),
      keep=config.train.keep_checkpoints)
  meta = {'stage': stage.name, 'num_sample_steps': stage.num_sample_steps,
          'num_updates': stage.num_updates, 'loss': None,
          'data_shape': list(ctx.base_model.data_shape),
          'num_classes': ctx.base_model.num_classes}

  if manager.latest_step() is not None:
    state, meta = manager.restore(abstract_state(ctx, stage))
    logging.info('%s: resuming from step %d', stage.name, int(state.step))
  else:
    init = (teacher_params if stage.is_distillation else
            jax.jit(ctx.base_model.init_params)(
                jax.random.PRNGKey(config.seed)))
    state = parallel.replicate(
        train_state.create(init, opt.tx, stage.num_sample_steps), ctx.mesh)
  teacher = (parallel.replicate(teacher_params, ctx.mesh)
             if stage.is_distillation else None)

  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), stage.index)
  train_steps = compile_train_steps(
      make_train_steps(model, opt, key, distill=stage.is_distillation),
      ctx.mesh)
  step = int(jax.device_get(state.step))
  data = ctx.dataset.train_batches(
      global_batch_size=config.train.batch_size,
      seed=config.seed * 1000 + stage.index, start_step=step,
      process_index=jax.process_index(), process_count=jax.process_count())

  # Imported here: clu's writers pull in TensorFlow (seconds), which sampling,
  # evaluation and argument checking do not need.
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top
  writer = metric_writers.create_default_writer(
      str(ctx.workdir / 'tensorboard' / stage.name),
      just_logging=jax.process_index() > 0)
  progress = periodic_actions.ReportProgress(
      num_train_steps=stage.num_updates, writer=writer,
      every_steps=config.train.log_loss_every_steps, every_secs=60.)
  every, log_every = (config.train.checkpoint_every_steps,
                      config.train.log_loss_every_steps)
  last_save = time.time()
  logging.info('%s: %d updates, sampler steps %d', stage.name,
               stage.num_updates, stage.num_sample_steps)
  while step < stage.num_updates:
    n = min(config.train.substeps, stage.num_updates - step,
            every - step % every)
    batches = parallel.global_batch(_stack([next(data) for _ in range(n)]),
                                    ctx.mesh, batch_axis=1)
    state, metrics = train_steps(state, batches, teacher)
    for s in range(step + 1, step + n + 1):
      progress(s)
    step += n
    if step // log_every != (step - n) // log_every or step == stage.num_updates:
      scalars = _mean_metrics(metrics)
      meta['loss'] = scalars['loss']
      writer.write_scalars(step, scalars)
    stop = preempted()
    if (step % every == 0 or step == stage.num_updates or stop or
        time.time() - last_save > config.train.checkpoint_every_secs):
      if meta['loss'] is None:
        meta['loss'] = _mean_metrics(metrics)['loss']
      manager.save(state, meta)
      last_save = time.time()
    if stop:
      manager.close()
      writer.close()
      raise Preempted(
          f'preempted: checkpoint saved at {stage.name} step {step}; rerun the '
          'same command to resume')
  writer.flush()
  writer.close()
  manager.close()
  return meta


def grid_steps(config, stage: Stage) -> int:
  """A student samples with its own step count, the teacher with the eval one."""
  return (stage.num_sample_steps if stage.is_distillation else
          config.model.eval_sampling_num_steps)


def write_stage_grid(ctx: Context, stage: Stage, params) -> epath.Path:
  """A PNG grid of samples from a finished stage, at its own step count."""
  config = ctx.config
  num_steps = grid_steps(config, stage)
  samples, _ = sample_lib.generate(
      ctx.base_model, params, mesh=ctx.mesh, num_samples=config.eval.grid_samples,
      num_steps=num_steps, seed=config.seed, sampler=config.sampler,
      batch_size=config.eval.batch_size)
  path = ctx.workdir / 'samples' / f'{stage.name}_{num_steps}steps.png'
  if jax.process_index() == 0:
    images.save_grid(path, samples, scale=max(1, 64 // samples.shape[1]))
  return path


# --- The whole pipeline ---------------------------------------------------------


def check_workdir(config, workdir) -> epath.Path:
  """Validates the config, also against a workdir it would resume.

  Nothing is written here, so a rejected command leaves the workdir untouched.
  """
  config_validation.validate_config(config)
  workdir = epath.Path(workdir)
  saved = workdir / 'config.json'
  if saved.exists():
    config_validation.check_compatible(json.loads(saved.read_text()), config)
  teacher_lib.check_teacher_path(config)
  return workdir


def record_config(config, workdir: epath.Path):
  """Writes the run's config beside its checkpoints (for sample / evaluate)."""
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))


def make_context(config, workdir, dataset=None) -> Context:
  """Builds the mesh and the model; `dataset` defaults to the config's."""
  if dataset is None:
    dataset = datasets.get_dataset(
        config.dataset.name, data_dir=config.dataset.data_dir or None,
        **config.dataset.args)
  return Context(config, epath.Path(workdir), parallel.make_mesh(), dataset,
                 model_lib.DiffusionModel.from_config(
                     config, dataset.data_shape, dataset.num_classes))


def run(config, workdir) -> list[dict[str, Any]]:
  """Runs (or resumes) every stage the config describes; returns their metas."""
  workdir = check_workdir(config, workdir)
  ctx = make_context(config, workdir)
  stages = plan_stages(config)
  teacher_params = (teacher_lib.load_external_teacher(ctx, config)
                    if stages[0].is_distillation else None)
  distributed.barrier('config_checked')  # all have read config.json
  record_config(config, workdir)
  install_preemption_handler()
  summary = []
  for stage in stages:
    t0 = time.time()
    done = checkpointing.stage_is_complete(workdir, stage.name,
                                           stage.num_updates)
    meta = (final_meta(workdir, stage) if done
            else run_stage(ctx, stage, teacher_params))
    teacher_params = final_params(ctx, stage)
    grid = write_stage_grid(ctx, stage, teacher_params)
    meta.update(grid=str(grid), seconds=round(time.time() - t0, 1),
                sampler_steps=grid_steps(config, stage))
    logging.info('%s finished: loss %s, samples %s', stage.name,
                 meta.get('loss'), grid)
    summary.append(meta)
  return summary


def final_meta(workdir, stage: Stage) -> dict[str, Any]:
  """The meta record of a stage's last checkpoint."""
  manager = checkpointing.StageCheckpoints(
      checkpointing.stage_dir(workdir, stage.name), read_only=True)
  meta = dict(manager.meta())
  manager.close()
  return meta


def format_summary(summary, workdir) -> str:
  """The closing table: one line per stage."""
  lines = [f'Finished. Workdir: {workdir}',
           f'{"stage":<14}{"sampler steps":>14}{"updates":>9}{"final loss":>12}'
           f'{"seconds":>9}  samples']
  for meta in summary:
    loss = meta.get('loss')
    lines.append(
        f'{meta["stage"]:<14}{meta["sampler_steps"]:>14}'
        f'{meta["num_updates"]:>9}'
        f'{(f"{loss:.5f}" if loss is not None else "-"):>12}'
        f'{meta["seconds"]:>9}  {meta["grid"]}')
  lines.append(f'Checkpoints: {epath.Path(workdir) / "checkpoints"}; '
               f'TensorBoard: {epath.Path(workdir) / "tensorboard"}')
  return '\n'.join(lines)
