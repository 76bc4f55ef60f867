"""What a workdir's checkpoints say about its stages: which ones hold a
checkpoint, which have finished, and their final models (the next stage's
teacher, `sample`'s and `evaluate`'s models). Collective where it says so:
every process of a run must take the same branch.
"""

from typing import Any

from etils import epath
import jax

from diffusion_distillation.parallel import distributed
from diffusion_distillation.parallel import sharding
from diffusion_distillation.pipeline import checkpoints
from diffusion_distillation.pipeline import optimization
from diffusion_distillation.pipeline.stages import Context
from diffusion_distillation.pipeline.stages import Stage


def check_saved_models(ctx: Context, stages):
  """Raises checkpoints.OtherModelError, before a run writes anything, if the first
  stage with a checkpoint holds another parameter tree than the run's model
  (every stage of a run has the same tree). A checkpoint too damaged to say
  is left to `restore_intact`'s repair."""
  for stage in stages:
    directory = checkpoints.stage_dir(ctx.workdir, stage.name)
    if not directory.exists():
      continue
    manager = checkpoints.StageCheckpoints(directory, read_only=True)
    try:
      step = manager.latest_step()
      if step is None:
        continue
      manager.check_params_tree(step, jax.eval_shape(
          ctx.base_model.init_params, jax.random.PRNGKey(0)))
      return
    except checkpoints.OtherModelError:
      raise
    except checkpoints.CheckpointError:
      return
    finally:
      manager.close()


def saved_stages(workdir) -> list[str]:
  """The stages of `workdir` that hold a checkpoint (sorted names)."""
  root = epath.Path(workdir) / 'checkpoints'
  if not root.exists():
    return []
  return sorted(d.name for d in root.iterdir()
                if d.is_dir() and any(s.name.isdigit() for s in d.iterdir()))


def stage_is_complete(workdir, stage_name: str, num_updates: int) -> bool:
  """True when the stage's final checkpoint (step >= num_updates) exists.

  Collective: call it on every process. Process 0's view decides, so all
  processes take the same branch (opening a CheckpointManager synchronizes
  them) even while process 0 is already creating the directory.
  """
  directory = checkpoints.stage_dir(workdir, stage_name)
  if not distributed.agree(directory.exists()):
    return False
  manager = checkpoints.StageCheckpoints(directory, read_only=True)
  latest = manager.latest_step()
  manager.close()
  return distributed.agree(latest is not None and latest >= num_updates)


def abstract_state(ctx: Context, stage: Stage):
  """The shapes and shardings of a stage's TrainState, for restoring."""
  opt = optimization.optimization_for(ctx.config, stage)
  rep = sharding.replicated(ctx.mesh)
  shapes = jax.eval_shape(
      lambda: opt.init_state(
          ctx.base_model.init_params(jax.random.PRNGKey(0)),
          stage.num_sample_steps))
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), shapes)


def final_params(ctx: Context, stage: Stage):
  """The (EMA) parameters of a finished stage (its final checkpoint)."""
  manager = checkpoints.StageCheckpoints(
      checkpoints.stage_dir(ctx.workdir, stage.name), read_only=True)
  restored = manager.restore_intact(abstract_state(ctx, stage), repair=False)
  manager.close()
  if restored is None:
    raise checkpoints.CheckpointError(f'{manager.directory} holds no checkpoint')
  return restored[0].averaged_params


def finished_stage(ctx: Context, stage: Stage):
  """(EMA params, meta) of a stage whose final checkpoint is intact, else None.

  A damaged final checkpoint is set aside (see `restore_intact`), so the
  stage is resumed from its last intact checkpoint and never becomes a
  teacher as it is.
  """
  if not stage_is_complete(ctx.workdir, stage.name, stage.num_updates):
    return None
  manager = checkpoints.StageCheckpoints(checkpoints.stage_dir(ctx.workdir, stage.name),
                             read_only=True)  # repairs move files only
  restored = manager.restore_intact(abstract_state(ctx, stage), repair=True)
  manager.close()
  if restored is None or int(restored[0].step) < stage.num_updates:
    return None
  return restored[0].averaged_params, restored[1]


def final_meta(workdir, stage: Stage) -> dict[str, Any]:
  """The meta record of a stage's last checkpoint."""
  manager = checkpoints.StageCheckpoints(
      checkpoints.stage_dir(workdir, stage.name), read_only=True)
  meta = dict(manager.meta())
  manager.close()
  return meta
