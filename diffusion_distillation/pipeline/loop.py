"""Teacher training and progressive distillation, stage by stage, resumably.

A run is a list of stages: optionally `base` (train the teacher), then one
`distill_<N>` stage per halving of the sampler steps. Each stage trains one
`TrainState` with a compiled multi-step update and checkpoints under its own
directory; a rerun skips finished stages and resumes the unfinished one from
its last checkpoint. Randomness comes from `fold_in(key, step)` and the digits
data order is a function of the step, so a resumed run ends with exactly the
parameters of an uninterrupted one.
"""

import json
import time
from typing import Any

from absl import logging
from etils import epath
import jax

from diffusion_distillation import config as config_lib
from diffusion_distillation import data as data_lib
from diffusion_distillation.models import diffusion_model as model_lib
from diffusion_distillation.models import generation
from diffusion_distillation.models import images
from diffusion_distillation.parallel import distributed
from diffusion_distillation.parallel import preemption
from diffusion_distillation.parallel import sharding
from diffusion_distillation.pipeline import checkpoints
from diffusion_distillation.pipeline import optimization
from diffusion_distillation.pipeline import teachers
from diffusion_distillation.pipeline import train_state
from diffusion_distillation.pipeline import update
from diffusion_distillation.pipeline.stages import Context
from diffusion_distillation.pipeline.stages import grid_steps
from diffusion_distillation.pipeline.stages import plan_stages
from diffusion_distillation.pipeline.stages import Stage


def _start_state(ctx: Context, stage: Stage, opt, manager, teacher_params):
  """(state, meta): resumed from the stage's last checkpoint, or fresh.

  A fresh student starts as a copy of `teacher_params`; a fresh base model
  from the config's seed.
  """
  if manager.latest_step() is not None:
    state, meta = manager.restore(checkpoints.abstract_state(ctx, stage))
    logging.info('%s: resuming from step %d', stage.name, int(state.step))
    return state, meta
  meta = {'stage': stage.name, 'num_sample_steps': stage.num_sample_steps,
          'num_updates': stage.num_updates, 'loss': None,
          'data_shape': list(ctx.base_model.data_shape),
          'num_classes': ctx.base_model.num_classes}
  init = (teacher_params if stage.is_distillation else
          jax.jit(ctx.base_model.init_params)(
              jax.random.PRNGKey(ctx.config.seed)))
  state = sharding.replicate(
      train_state.create(init, opt.tx, stage.num_sample_steps), ctx.mesh)
  return state, meta


def _writers(ctx: Context, stage: Stage):
  """TensorBoard (process 0; the others log only) and progress with ETA."""
  # Imported here: clu's writers pull in TensorFlow (seconds), which sampling,
  # evaluation and argument checking do not need.
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top
  writer = metric_writers.create_default_writer(
      str(ctx.workdir / 'tensorboard' / stage.name),
      just_logging=jax.process_index() > 0)
  progress = periodic_actions.ReportProgress(
      num_train_steps=stage.num_updates, writer=writer,
      every_steps=ctx.config.train.log_loss_every_steps, every_secs=60.)
  return writer, progress


def run_stage(ctx: Context, stage: Stage, teacher_params) -> dict[str, Any]:
  """Trains one stage to its end (or to preemption); returns its meta record.

  `teacher_params` are the frozen teacher's for distillation (also the
  student's initialization), None for base training.
  """
  config, train = ctx.config, ctx.config.train
  opt = optimization.optimization_for(config, stage)
  manager = checkpoints.StageCheckpoints(
      checkpoints.stage_dir(ctx.workdir, stage.name),
      keep=train.keep_checkpoints)
  state, meta = _start_state(ctx, stage, opt, manager, teacher_params)
  teacher = (sharding.replicate(teacher_params, ctx.mesh)
             if stage.is_distillation else None)
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), stage.index)
  train_steps = update.compile_train_steps(
      update.make_train_steps(optimization.stage_model(ctx, opt), opt, key,
                              distill=stage.is_distillation), ctx.mesh)
  step = int(jax.device_get(state.step))
  data = ctx.dataset.train_batches(
      global_batch_size=train.batch_size,
      seed=config.seed * 1000 + stage.index, start_step=step,
      process_index=jax.process_index(), process_count=jax.process_count())
  writer, progress = _writers(ctx, stage)
  every, log_every = train.checkpoint_every_steps, train.log_loss_every_steps
  last_save, stop = time.time(), False
  logging.info('%s: %d updates, sampler steps %d', stage.name,
               stage.num_updates, stage.num_sample_steps)
  while step < stage.num_updates and not stop:
    n = min(train.substeps, stage.num_updates - step, every - step % every)
    batches = sharding.global_batch(
        update.stack_batches([next(data) for _ in range(n)]), ctx.mesh,
        batch_axis=1)
    state, metrics = train_steps(state, batches, teacher)
    for s in range(step + 1, step + n + 1):
      progress(s)
    step += n
    if (step // log_every != (step - n) // log_every or
        step == stage.num_updates):
      scalars = update.mean_metrics(metrics)
      meta['loss'] = scalars['loss']
      writer.write_scalars(step, scalars)
    stop = preemption.preempted()
    if (step % every == 0 or step == stage.num_updates or stop or
        time.time() - last_save > train.checkpoint_every_secs):
      if meta['loss'] is None:
        meta['loss'] = update.mean_metrics(metrics)['loss']
      manager.save(state, meta)
      last_save = time.time()
  writer.close()
  manager.close()
  if stop:
    raise preemption.Preempted(
        f'preempted: checkpoint saved at {stage.name} step {step}; rerun the '
        'same command to resume')
  return meta


def write_stage_grid(ctx: Context, stage: Stage, params) -> epath.Path:
  """A PNG grid of samples from a finished stage, at its own step count."""
  config = ctx.config
  num_steps = grid_steps(config, stage)
  samples, _ = generation.generate(
      ctx.base_model, params, mesh=ctx.mesh,
      num_samples=config.eval.grid_samples, num_steps=num_steps,
      seed=config.seed, sampler=config.sampler,
      batch_size=config.eval.batch_size)
  path = ctx.workdir / 'samples' / f'{stage.name}_{num_steps}steps.png'
  if jax.process_index() == 0:
    images.save_grid(path, samples, scale=max(1, 64 // samples.shape[1]))
  return path


def check_workdir(config, workdir) -> epath.Path:
  """Validates the config, also against a workdir it would resume.

  Nothing is written here, so a rejected command leaves the workdir untouched.
  """
  config_lib.validate_config(config)
  workdir = epath.Path(workdir)
  saved = workdir / 'config.json'
  if saved.exists():
    config_lib.check_compatible(json.loads(saved.read_text()), config)
  teachers.check_teacher_path(config)
  return workdir


def record_config(config, workdir: epath.Path):
  """Writes the run's config beside its checkpoints (for sample / evaluate)."""
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))


def make_context(config, workdir, dataset=None) -> Context:
  """Builds the mesh and the model; `dataset` defaults to the config's."""
  if dataset is None:
    dataset = data_lib.from_config(config)
  return Context(config, epath.Path(workdir), sharding.make_mesh(), dataset,
                 model_lib.DiffusionModel.from_config(
                     config, dataset.data_shape, dataset.num_classes))


def run(config, workdir) -> list[dict[str, Any]]:
  """Runs (or resumes) every stage the config describes; returns their metas."""
  workdir = check_workdir(config, workdir)
  ctx = make_context(config, workdir)
  stages = plan_stages(config)
  teacher_params = (teachers.load_external_teacher(ctx, config)
                    if stages[0].is_distillation else None)
  distributed.barrier('config_checked')  # all have read config.json
  record_config(config, workdir)
  preemption.install_handler()
  summary = []
  for stage in stages:
    t0 = time.time()
    done = checkpoints.stage_is_complete(workdir, stage.name,
                                         stage.num_updates)
    meta = (checkpoints.final_meta(workdir, stage) if done
            else run_stage(ctx, stage, teacher_params))
    teacher_params = checkpoints.final_params(ctx, stage)
    grid = write_stage_grid(ctx, stage, teacher_params)
    meta.update(grid=str(grid), seconds=round(time.time() - t0, 1),
                sampler_steps=grid_steps(config, stage))
    logging.info('%s finished: loss %s, samples %s', stage.name,
                 meta.get('loss'), grid)
    summary.append(meta)
  return summary


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
