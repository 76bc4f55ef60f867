"""Orbax checkpoints: one `CheckpointManager` per stage under the workdir.

Layout (paths may be local or `gs://`):

    WORKDIR/checkpoints/base/<step>/            teacher training
    WORKDIR/checkpoints/distill_<N>/<step>/     student that samples in N steps

Each checkpoint is a Composite of the `TrainState` (StandardSave) and a small
JSON `meta` record (stage name, sampler steps, stage length, last loss). Orbax
writes to a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoint intact. The last checkpoint of a stage
is its final one and is never deleted, so any step count can be sampled later.
"""

from typing import Any, Optional

from etils import epath
import jax
import orbax.checkpoint as ocp

from diffusion_distillation.errors import UserError
from diffusion_distillation.parallel import distributed
from diffusion_distillation.parallel import sharding
from diffusion_distillation.pipeline import optimization
from diffusion_distillation.pipeline import train_state
from diffusion_distillation.pipeline.stages import Context
from diffusion_distillation.pipeline.stages import Stage


class CheckpointError(UserError):
  """A checkpoint could not be written or read (disk, permissions, damage)."""


def _reason(error: BaseException) -> str:
  """The first line of an exception's message (orbax's run to pages)."""
  lines = [l.strip() for l in str(error).splitlines() if l.strip()]
  return lines[0][:300] if lines else type(error).__name__


def stage_dir(workdir, stage_name: str) -> epath.Path:
  return epath.Path(workdir) / 'checkpoints' / stage_name


class StageCheckpoints:
  """Saves and restores the checkpoints of one stage."""

  def __init__(self, directory, *, keep: int = 2, read_only: bool = False):
    self.directory = epath.Path(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=not read_only, read_only=read_only,
            # A save killed midway leaves a temporary directory: removed when
            # the stage is next opened for writing.
            cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=False))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, state, meta: dict):
    """Writes `state` at its own step (blocking; atomic through orbax)."""
    step = int(jax.device_get(state.step))
    try:
      self._manager.save(
          step,
          args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  meta=ocp.args.JsonSave(meta)),
          force=True)
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f'saving checkpoint {self.directory / str(step)} failed: '
          f'{_reason(e)}; the previous checkpoint is intact, rerun to resume '
          'from it') from e

  def _restore(self, step: Optional[int], **items):
    """The Composite `items` of checkpoint `step` (default: latest)."""
    step = self.latest_step() if step is None else step
    try:
      return self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f'reading checkpoint {self.directory / str(step)} failed: '
          f'{_reason(e)}') from e

  def restore(self, abstract_state, step: Optional[int] = None):
    """(state, meta) at `step` (default: latest), shaped like `abstract_state`."""
    restored = self._restore(
        step, state=ocp.args.StandardRestore(abstract_state),
        meta=ocp.args.JsonRestore())
    return restored.state, restored.meta

  def restore_as_saved(self, step: Optional[int] = None):
    """(state as a dict of host arrays, meta) without a target structure.

    For reading a checkpoint whose optimizer state may not match this run's
    (e.g. another run's teacher): only its arrays are needed.
    """
    restored = self._restore(step, state=ocp.args.StandardRestore(),
                             meta=ocp.args.JsonRestore())
    return restored.state, restored.meta

  def meta(self, step: Optional[int] = None) -> dict[str, Any]:
    return self._restore(step, meta=ocp.args.JsonRestore()).meta

  def close(self):
    self._manager.close()


def stage_is_complete(workdir, stage_name: str, num_updates: int) -> bool:
  """True when the stage's final checkpoint (step >= num_updates) exists.

  Collective: call it on every process. Process 0's view decides, so all
  processes take the same branch (opening a CheckpointManager synchronizes
  them) even while process 0 is already creating the directory.
  """
  directory = stage_dir(workdir, stage_name)
  if not distributed.agree(directory.exists()):
    return False
  manager = StageCheckpoints(directory, read_only=True)
  latest = manager.latest_step()
  manager.close()
  return distributed.agree(latest is not None and latest >= num_updates)


def abstract_state(ctx: Context, stage: Stage):
  """The shapes and shardings of a stage's TrainState, for restoring."""
  opt = optimization.optimization_for(ctx.config, stage)
  rep = sharding.replicated(ctx.mesh)
  shapes = jax.eval_shape(
      lambda: train_state.create(
          ctx.base_model.init_params(jax.random.PRNGKey(0)), opt.tx,
          stage.num_sample_steps))
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), shapes)


def final_params(ctx: Context, stage: Stage):
  """The EMA parameters of a finished stage (its final checkpoint)."""
  manager = StageCheckpoints(
      stage_dir(ctx.workdir, stage.name), read_only=True)
  state, _ = manager.restore(abstract_state(ctx, stage))
  manager.close()
  return state.ema_params


def final_meta(workdir, stage: Stage) -> dict[str, Any]:
  """The meta record of a stage's last checkpoint."""
  manager = StageCheckpoints(
      stage_dir(workdir, stage.name), read_only=True)
  meta = dict(manager.meta())
  manager.close()
  return meta
