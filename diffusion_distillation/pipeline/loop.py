"""The trainer: teacher training and distillation, stage by stage, resumably.

`run` is the whole loop, in one function read top to bottom; the helpers
below it are its named steps. A run is a list of stages (stages.py):
optionally `base` (train the teacher), then one `distill_<N>` stage per
halving of the sampler steps (and stage one of guided distillation). Each
stage trains one `TrainState` with the compiled update of its objective
(objectives/) and checkpoints under its own directory; a rerun skips
finished stages and resumes the unfinished one from its last checkpoint.
Randomness comes from `fold_in(key, step)` and the data order is a function
of the step, so a resumed run ends with exactly the parameters of an
uninterrupted one.
"""

import math
import os
import time
from typing import Any

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp

from diffusion_distillation import config as config_lib
from diffusion_distillation import data as data_lib
from diffusion_distillation import files
from diffusion_distillation.models import diffusion_model as model_lib
from diffusion_distillation.models import generation
from diffusion_distillation.models import images
from diffusion_distillation.parallel import distributed
from diffusion_distillation.parallel import preemption
from diffusion_distillation.parallel import sharding
from diffusion_distillation.pipeline import checkpoints
from diffusion_distillation.pipeline import finished_stages
from diffusion_distillation.pipeline import divergence
from diffusion_distillation.pipeline import eval_loss
from diffusion_distillation.pipeline import optimization
from diffusion_distillation.pipeline import progress as progress_lib
from diffusion_distillation.pipeline import stages as stages_lib
from diffusion_distillation.pipeline import summaries
from diffusion_distillation.pipeline import teachers
from diffusion_distillation.pipeline import tracing
from diffusion_distillation.pipeline import update
from diffusion_distillation.pipeline import workdir_lock
from diffusion_distillation.pipeline.stages import Context
from diffusion_distillation.pipeline.stages import grid_steps
from diffusion_distillation.pipeline.stages import plan_stages
from diffusion_distillation.pipeline.stages import Stage


def run(config, workdir, *, profile_steps: int = 0) -> list[dict[str, Any]]:
  """Trains the teacher and distills it, stage by stage (paper Algorithm 2).

  Read top to bottom: (1) the config, once, into what the loop needs (the
  mesh, data and model, the stage plan, the first teacher); then for each
  stage (2) restore-or-init, (3) its objective's compiled update, (4) the
  updates, with logging, checkpoints and preemption, and (5) the student
  handed on as the next stage's teacher. A finished stage is verified, not
  retrained; an unfinished one resumes from its last checkpoint exactly
  (step k's randomness is fold_in(stage key, k), its data a function of k).

  Holds the workdir's lock and turns SIGTERM / Ctrl-C into a checkpoint and a
  clean stop. Fields `config` lacks take their defaults. `profile_steps`:
  trace that many updates into WORKDIR/profile (tracing.py). Returns the
  stages' meta records.
  """
  # 1. The config, once. Nothing is written before it is validated.
  config = config_lib.complete(config)
  train = config.train
  rerun = check_workdir(config, workdir)
  workdir = epath.Path(workdir)
  distributed.check_same_run(config_lib.json_fields(config), os.fspath(workdir))
  ctx = make_context(config, workdir)
  if profile_steps:
    ctx.trace = tracing.StepTrace(workdir / 'profile', profile_steps)
  stages = plan_stages(config)
  finished_stages.check_saved_models(ctx, stages)
  teacher_params = (teachers.load_external_teacher(ctx, config)
                    if stages[0].trains_student else None)
  distributed.barrier('config_checked')  # all have read config.json
  summary = []
  with workdir_lock.hold(workdir), preemption.handling():
    # Stale students go before config.json records what made them stale: a
    # run stopped in between redoes the move at its next start.
    _apply_rerun(rerun, workdir, stages)
    record_config(config, workdir)
    write_dashboards(config, workdir, stages)
    run_progress = progress_lib.RunProgress(stages, train.batch_size)
    for stage in stages:
      t0 = time.time()
      finished = finished_stages.finished_stage(ctx, stage)
      if finished:
        teacher_params, meta = finished
      else:
        # 2. Restore-or-init: a fresh student is a copy of its teacher.
        opt = optimization.optimization_for(config, stage)
        manager = checkpoints.StageCheckpoints(
            checkpoints.stage_dir(workdir, stage.name),
            keep=train.keep_checkpoints)
        state, meta = _start_state(ctx, stage, opt, manager, teacher_params)
        checkpoints.write_parameter_overview(workdir, stage.name,
                                             state.params)
        teacher = (sharding.replicate(teacher_params, ctx.mesh)
                   if stage.trains_student else None)
        # 3. The objective's compiled update; step k draws fold_in(key, k).
        train_steps = _compiled_update(ctx, stage, opt)
        key = stage_key(ctx, stage)
        # 4. The updates: a compiled call of up to train.substeps at a time.
        step = int(jax.device_get(state.step))
        data = _train_batches(ctx, stage, step)
        writer = stage_writer(ctx, stage)
        progress = run_progress.stage(stage, step)
        writer.write_hparams(config, stage.name,
                             stages_lib.stage_hparams(config, stage))
        guard = divergence.Guard(config, stage)
        evals = eval_loss.EvalLoss(ctx, stage)
        every, log_every = (train.checkpoint_every_steps,
                            train.log_loss_every_steps)
        poll, stop = preemption.Poll(train.checkpoint_every_secs), False
        skipped = jnp.zeros((), jnp.float32) if opt.skip_nonfinite else None
        logging.info('%s: %d updates, sampler steps %d', stage.name,
                     stage.num_updates, grid_steps(config, stage))
        try:
          while step < stage.num_updates and not stop:
            n = min(train.substeps, stage.num_updates - step,
                    every - step % every)
            host = [ctx.dataset.device_batch(next(data)) for _ in range(n)]
            batches = sharding.global_batch(update.stack_batches(host),
                                            ctx.mesh, batch_axis=1)
            state, metrics = train_steps(state, batches, teacher, key)
            ctx.trace.after_call(n, state)
            if skipped is not None:  # summed on the device: no sync per call
              skipped = skipped + metrics['skipped'].sum()
            step += n
            evals.after(step, n, state, teacher, writer)
            logged = (step // log_every != (step - n) // log_every or
                      step == stage.num_updates)
            if logged:  # checks the loss and this state
              meta['loss'] = _log(writer, guard, state, step, metrics,
                                  skipped)
              progress.log(step, meta['loss'])
            stop, save_due = poll.after_call()
            if (step % every == 0 or step == stage.num_updates or stop or
                save_due):
              if not logged:  # nothing blown up is saved
                meta['loss'] = guard.check(step, state,
                                           update.mean_metrics(metrics))
              manager.save(state, meta)
              poll.saved()
        finally:
          ctx.trace.stop()
          writer.close()
          manager.close()
        if stop:
          raise preemption.Preempted(preemption.stop_message(stage.name,
                                                             step))
        # 5. The student (its final checkpoint) is the next teacher.
        teacher_params = finished_stages.final_params(ctx, stage)
      if preemption.stop_agreed():  # not after a grid and another compile
        raise preemption.Preempted(preemption.stop_message(
            stage.name, stage.num_updates))
      grid = write_stage_grid(ctx, stage, teacher_params)
      if not finished:
        run_progress.finished(stage, time.time() - t0)
      meta.update(grid=str(grid), seconds=round(time.time() - t0, 1),
                  sampler_steps=grid_steps(config, stage))
      logging.info('%s finished: loss %s, samples %s', stage.name,
                   meta.get('loss'), grid)
      summary.append(meta)
  return summary


def _start_state(ctx: Context, stage: Stage, opt, manager, teacher_params):
  """(state, meta): resumed from the stage's last checkpoint, or fresh.

  A fresh student starts as a copy of `teacher_params`; a fresh base model
  from the config's seed.
  """
  restored = manager.restore_intact(finished_stages.abstract_state(ctx, stage),
                                   repair=True)
  if restored is not None:
    state, meta = restored
    logging.info('%s: resuming from step %d', stage.name, int(state.step))
    return state, dict(meta, num_updates=stage.num_updates)
  meta = {'stage': stage.name, 'num_sample_steps': stage.num_sample_steps,
          'num_updates': stage.num_updates, 'loss': None,
          'data_shape': list(ctx.base_model.data_shape),
          'num_classes': ctx.base_model.num_classes}
  init = (teacher_params if stage.trains_student else
          jax.jit(ctx.base_model.init_params)(
              jax.random.PRNGKey(ctx.config.seed)))
  state = sharding.replicate(opt.init_state(init, stage.num_sample_steps),
                             ctx.mesh)
  return state, meta


def stage_writer(ctx: Context, stage: Stage) -> summaries.SummaryWriter:
  """The stage's TensorBoard run `WORKDIR/tensorboard/<stage>` (process 0)."""
  return summaries.SummaryWriter(ctx.workdir / 'tensorboard' / stage.name,
                                 enabled=jax.process_index() == 0)


def _log(writer, guard, state, step, metrics, skipped) -> float:
  """Writes the scalars of the last call; returns its loss (after checks)."""
  scalars = update.mean_metrics(metrics)
  loss = guard.check(step, state, scalars)
  if loss > 0:  # the students' losses are far below the teacher's
    scalars['log10_loss'] = math.log10(loss)
  if skipped is not None:
    scalars['skipped_updates'] = float(sharding.to_host(skipped))
  writer.write_scalars(step, scalars)
  writer.flush()
  return loss


def _compiled_update(ctx: Context, stage: Stage, opt):
  """The stage's compiled update, shared by every stage of its objective
  and options.

  Its key (`stage_key`) and sampler step count (in the state) are data, so
  base + N distillation stages compile two programs. `optimization_for`
  reads only the objective and the number of updates of a stage; the
  options (e.g. a TRACT phase's teacher steps) are its objective's.
  """
  program = (stage.objective, stage.num_updates, stage.options)
  if program not in ctx.programs:
    objective = stage.objective_for(optimization.stage_model(ctx, opt))
    ctx.programs[program] = update.compile_train_steps(
        update.make_train_steps(objective, opt), ctx.mesh)
  return ctx.programs[program]


def stage_key(ctx: Context, stage: Stage):
  """The stage's randomness: step k of it uses fold_in(this, k)."""
  return sharding.replicate(
      jax.random.fold_in(jax.random.PRNGKey(ctx.config.seed), stage.index),
      ctx.mesh)


def _train_batches(ctx: Context, stage: Stage, step: int):
  """This process's share of the stage's batches from `step` on."""
  return ctx.dataset.train_batches(
      global_batch_size=ctx.config.train.batch_size,
      seed=ctx.config.seed * 1000 + stage.index, start_step=step,
      process_index=jax.process_index(), process_count=jax.process_count())


def write_stage_grid(ctx: Context, stage: Stage, params) -> epath.Path:
  """A grid of samples from a finished stage, at its own step count.

  A PNG under WORKDIR/samples, and an image of the stage's TensorBoard run.
  """
  config = ctx.config
  num_steps = grid_steps(config, stage)
  samples, _ = generation.generate(
      stages_lib.sampling_model(ctx, stage), params, mesh=ctx.mesh,
      num_samples=config.eval.grid_samples, num_steps=num_steps,
      seed=config.seed, sampler=config.sampler,
      batch_size=config.eval.batch_size,
      guidance=stages_lib.grid_guidance(config, stage))
  path = ctx.workdir / 'samples' / f'{stage.name}_{num_steps}steps.png'
  scale = max(1, 64 // samples.shape[1])
  if jax.process_index() == 0:
    images.save_grid(path, samples, scale=scale)
  writer = stage_writer(ctx, stage)
  writer.write_images(stage.num_updates, {
      f'samples/{num_steps}_steps': images.dashboard_grid(samples)})
  writer.close()
  return path


def check_workdir(config, workdir) -> config_lib.Rerun:
  """Validates the config, also against a workdir it would resume.

  Nothing is written here, so a rejected command leaves the workdir untouched.
  """
  config_lib.validate_config(config)
  saved = epath.Path(workdir) / 'config.json'
  if saved.exists():
    rerun = config_lib.check_rerun(config_lib.read_saved_config(saved), config)
  elif stages := finished_stages.saved_stages(workdir):
    raise config_lib.ConfigError(
        f'{workdir} holds checkpoints ({", ".join(stages)}) but no '
        'config.json (deleted?), so this run cannot be checked against the '
        'config that made them: restore config.json or use a new --workdir')
  else:
    rerun = config_lib.Rerun([], False)
  teachers.check_teacher_path(config)
  return rerun


def _apply_rerun(rerun: config_lib.Rerun, workdir, stages):
  """Says what a changed config does; sets aside stale students."""
  for notice in rerun.notices:
    logging.warning('%s', notice)
  if rerun.base_extended:
    for stage in stages:
      if stage.trains_student:
        checkpoints.set_aside_stage(workdir, stage.name, 'stale')


def write_dashboards(config, workdir: epath.Path, planned):
  """The TensorBoard run `dashboards`: the HParams experiment (one session
  per stage) and the quality-vs-steps layout of the custom scalars plugin."""
  values = config_lib.METRIC_VALUES[config.eval.metric]
  writer = summaries.SummaryWriter(workdir / 'tensorboard' / 'dashboards',
                                   enabled=jax.process_index() == 0)
  writer.write_summary(summaries.experiment(
      config, stages_lib.stage_hparams(config, planned[0]), values))
  writer.write_summary(summaries.quality_layout(values))
  writer.close()


def record_config(config, workdir: epath.Path):
  """Writes the run's config beside its checkpoints (for sample / evaluate),
  whole or not at all: a full disk leaves the previous one."""
  if jax.process_index() == 0:
    files.write_text(workdir / 'config.json',
                     config.to_json_best_effort(indent=2))


def make_context(config, workdir, dataset=None) -> Context:
  """Builds the mesh and the model; `dataset` defaults to the config's."""
  if dataset is None:
    dataset = data_lib.from_config(config, workdir,
                                   write_index=jax.process_index() == 0)
  return Context(config, epath.Path(workdir), sharding.make_mesh(), dataset,
                 model_lib.DiffusionModel.from_config(
                     config, dataset.data_shape, dataset.num_classes))


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
