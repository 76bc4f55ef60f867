"""Orbax checkpoints: one `CheckpointManager` per stage under the workdir.

Layout (paths may be local or `gs://`):

    WORKDIR/checkpoints/base/<step>/            teacher training
    WORKDIR/checkpoints/distill_<N>/<step>/     student that samples in N steps

Each checkpoint is a Composite of the `TrainState` (StandardSave) and a small
JSON `meta` record (stage name, sampler steps, stage length, last loss, and a
checksum of every array). Orbax writes to a temporary directory and renames it
when complete, so a run killed mid-save leaves the previous checkpoint intact.
A checkpoint that later cannot be read or fails its checksum is moved to
`WORKDIR/checkpoints/damaged/<stage>/<step>` by a training run, which resumes
from the one before; `sample` and `evaluate` only report it. The last
checkpoint of a stage is its final one and is never deleted, so any step count
can be sampled later.
"""

import logging as std_logging
import os
import re
from typing import Any, Optional
import zlib

from absl import logging
from clu import parameter_overview
from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from diffusion_distillation import files
from diffusion_distillation import errors
from diffusion_distillation.errors import FaultError
from diffusion_distillation.errors import UserError
from diffusion_distillation.parallel import distributed
from diffusion_distillation.parallel import sharding
from diffusion_distillation.parallel import watchdog
from diffusion_distillation.pipeline import official_checkpoints
from diffusion_distillation.pipeline import train_state


class CheckpointError(UserError):
  """A checkpoint could not be written or read (disk, permissions, damage)."""


class CheckpointSaveError(CheckpointError, FaultError):
  """A checkpoint could not be written (a full disk, permissions): a fault,
  exit status 1; the previous checkpoint is intact."""


class OtherModelError(CheckpointError):
  """A checkpoint holds another parameter tree than the config's model: not
  damage (nothing to repair), another architecture or an older layout."""


def _reason(error: BaseException, writing: bool = False) -> str:
  """An exception's message in a line (orbax's run to pages).

  TensorStore's errors nest the driver, the key and the file read into one
  long status text (that orbax may wrap in a message of its own); of that,
  the status code and the innermost file are what a user can act on. An
  item that is gone is named.
  """
  text = next((str(cause) for cause in errors.causes(error)  # orbax wraps
               if re.match(r'[A-Z][A-Z_]+: ', str(cause))), str(error))
  status = re.match(r'([A-Z][A-Z_]+): ', text)
  read = re.findall(r'file "([^"]+)"', text)
  if status and read and writing:
    return f'{status.group(1)}: cannot write {read[-1]}'
  if status and read:
    return (f'{status.group(1)}: cannot read {read[-1]} (a file of the '
            'checkpoint is missing or damaged)')
  item = re.search(r'Unknown key: (\w+)', text)
  if item:
    return f'its {item.group(1)!r} item is missing'
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  return lines[0][:300] if lines else type(error).__name__


def stage_dir(workdir, stage_name: str) -> epath.Path:
  return epath.Path(workdir) / 'checkpoints' / stage_name


PARAMETERS_FILE = 'parameters.txt'


def write_parameter_overview(workdir, stage_name: str, params):
  """clu's table of the stage's parameters (name, shape, dtype, size, and
  the total), written whole as STAGE_DIR/parameters.txt by process 0; the
  log gets its total, in one line."""
  table = parameter_overview.get_parameter_overview(params,
                                                    include_stats=False)
  path = stage_dir(workdir, stage_name) / PARAMETERS_FILE
  total = table.strip().splitlines()[-1]  # 'Total: N -- B bytes'
  logging.info('%s parameters: %s (each in %s)', stage_name,
               total.removeprefix('Total: '), path)
  if jax.process_index() != 0:
    return
  files.write_text(path, table + '\n')


def state_checksum(state) -> str:
  """CRC-32 of every array's dtype, shape and bytes, in tree order."""
  digest = 0
  for leaf in jax.tree.leaves(sharding.to_host(state)):
    value = np.ascontiguousarray(leaf)
    digest = zlib.crc32(f'{value.dtype}{value.shape}'.encode(), digest)
    digest = zlib.crc32(value.tobytes(), digest)
  return f'{digest:08x}'


class _ReadOnlyNotices(std_logging.Filter):
  """Drops the warnings orbax logs whenever a manager is opened read-only."""

  def filter(self, record):
    return not str(record.msg).startswith(
        ('Given directory is read only', 'CheckpointManagerOptions.read_only'))


class _OrbaxLogs(std_logging.Filter):
  """Drops orbax's records (the tracebacks of a failed save)."""

  def filter(self, record):
    return f'{os.sep}orbax{os.sep}' not in record.pathname


class StageCheckpoints:
  """Saves and restores the checkpoints of one stage."""

  def __init__(self, directory, *, keep: int = 2, read_only: bool = False):
    self.directory = epath.Path(directory)
    # Reading (sample, evaluate, load, a teacher) opens managers read-only
    # on purpose; orbax warns about it three times each, at construction.
    absl_logger, notices = std_logging.getLogger('absl'), _ReadOnlyNotices()
    absl_logger.addFilter(notices)
    try:
      self._manager = ocp.CheckpointManager(
          self.directory,
          options=ocp.CheckpointManagerOptions(
              max_to_keep=keep, create=not read_only, read_only=read_only,
              # A save killed midway leaves a temporary directory: removed
              # when the stage is next opened for writing.
              cleanup_tmp_directories=not read_only,
              enable_async_checkpointing=False),
          # Named, so that a read-only manager can read an item's metadata.
          item_handlers={'state': ocp.StandardCheckpointHandler(),
                         'meta': ocp.JsonCheckpointHandler()})
    finally:
      absl_logger.removeFilter(notices)

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, state, meta: dict):
    """Writes `state` at its own step (blocking; atomic through orbax).

    A failed write is one CheckpointSaveError: orbax's own tracebacks of it
    (logged from its writer threads) are dropped, as our line says it all.
    """
    step = int(jax.device_get(state.step))
    meta = dict(meta, checksum=state_checksum(state))
    absl_logger, orbax_errors = std_logging.getLogger('absl'), _OrbaxLogs()
    absl_logger.addFilter(orbax_errors)
    try:
      self._manager.save(
          step,
          args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  meta=ocp.args.JsonSave(meta)),
          force=True)
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      vanished = watchdog.vanished_line() if watchdog.running() else None
      if vanished:  # a peer died in this collective save: that is the news
        raise FaultError(vanished.removeprefix('error: ')) from None
      disk = errors.disk_error(e)
      then = (f'{disk[1]} and rerun' if disk else 'rerun')
      raise CheckpointSaveError(
          f'saving checkpoint {self.directory / str(step)} failed: '
          f'{disk[0] if disk else _reason(e, writing=True)}; the previous '
          f'checkpoint is intact: {then} to resume from it') from None
    finally:
      absl_logger.removeFilter(orbax_errors)

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
    """(state, meta) at `step` (default: latest), shaped like `abstract_state`.

    Raises CheckpointError when it cannot be read or its arrays differ from
    the checksum recorded when it was saved.
    """
    step = self.latest_step() if step is None else step
    is_train_state = isinstance(abstract_state, train_state.TrainState)
    if is_train_state:  # with or without EMA, as saved
      saved_state = self._state_metadata(step)
      self._check_params(step, saved_state, abstract_state.params)
      saved = train_state.with_average(
          abstract_state, saved_state['ema_params'] is not None)
    else:
      saved = abstract_state
    restored = self._restore(
        step, state=ocp.args.StandardRestore(saved),
        meta=ocp.args.JsonRestore())
    expected = restored.meta.get('checksum')
    if expected and state_checksum(restored.state) != expected:
      raise CheckpointError(
          f'checkpoint {self.directory / str(step)} is damaged: its arrays do '
          'not match the checksum written with them')
    if is_train_state:  # as asked for
      return (train_state.with_average(
          restored.state, abstract_state.ema_params is not None),
              restored.meta)
    return restored.state, restored.meta

  def _state_metadata(self, step: int):
    """The saved 'state' item's tree of array metadata at `step`."""
    try:
      saved = self._manager.item_metadata(step)['state']
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f'reading checkpoint {self.directory / str(step)} failed: '
          f'{_reason(e)}') from e
    if saved is None:  # orbax reads a missing _METADATA as no metadata
      raise CheckpointError(
          f'reading checkpoint {self.directory / str(step)} failed: its '
          'state/_METADATA file is missing')
    return saved

  def check_params_tree(self, step: int, expected):
    """Raises OtherModelError unless checkpoint `step`'s parameters have
    `expected`'s names and shapes (before orbax's bare 'tree structures do
    not match')."""
    self._check_params(step, self._state_metadata(step), expected)

  def _check_params(self, step: int, saved_state, expected):
    problems = official_checkpoints.parameter_mismatches(
        expected, saved_state['params'])
    if problems:
      more = f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''
      raise OtherModelError(
          f'checkpoint {self.directory / str(step)} holds another model than '
          f'the config describes: {problems[0]}{more}; it was written by '
          "another architecture, or is a guided workdir from before the "
          "authors' w_unet3 layout (dense_w0, dense_w1): train in a new "
          'workdir')

  def restore_intact(self, abstract_state, *, repair: bool):
    """(state, meta) of the newest intact checkpoint; None if there is none.

    With `repair` (training), each newer damaged checkpoint is moved to
    `checkpoints/damaged/` with one warning and the one before is tried; a
    stage whose checkpoints are all damaged raises CheckpointError. Without
    it (sampling, evaluation), a damaged newest checkpoint raises at once and
    nothing is changed. One of another model (OtherModelError) is not
    damage: it raises, and nothing is moved. Collective on multi-process
    runs.
    """
    set_aside = False
    while (step := self.latest_step()) is not None:
      other_model = False
      try:
        restored, problem = self.restore(abstract_state, step), None
      except CheckpointError as e:
        restored, problem = None, str(e)
        other_model = isinstance(e, OtherModelError)
      if distributed.agree(problem is None):
        return restored
      if distributed.agree(other_model):  # a collective: on every process
        raise OtherModelError(problem or 'process 0 read another model in '
                              f'{self.directory}')
      if not repair:
        raise CheckpointError(
            f'{problem}; rerun the training command to repair the stage')
      self._set_aside(step, problem)
      set_aside = True
    if set_aside:
      raise CheckpointError(
          f'no intact checkpoint is left in {self.directory} (the damaged '
          f'ones are in {self._damaged_dir()}); rerun to train the stage '
          'from its start')
    return None

  def _damaged_dir(self) -> epath.Path:
    return self.directory.parent / 'damaged' / self.directory.name

  def _set_aside(self, step: int, problem: str):
    """Moves checkpoint `step` out of the stage (never deletes it)."""
    if distributed.is_primary():
      target = _move_aside(self.directory / str(step), self._damaged_dir())
      logging.warning('%s; moved it to %s and resuming from the checkpoint '
                      'before it', problem, target)
    distributed.barrier(f'set_aside_{self.directory.name}_{step}')
    self._manager.reload()

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


def _move_aside(source: epath.Path, directory: epath.Path) -> epath.Path:
  """Moves `source` into `directory` under its name (or `name-<k>` if taken)."""
  target, suffix = directory / source.name, 0
  while target.exists():
    suffix += 1
    target = directory / f'{source.name}-{suffix}'
  directory.mkdir(parents=True, exist_ok=True)
  source.rename(target)
  return target


def set_aside_stage(workdir, stage_name: str, why: str):
  """Moves a stage's checkpoints to `checkpoints/<why>/<stage>` (kept)."""
  source = stage_dir(workdir, stage_name)
  if distributed.agree(source.exists()) and distributed.is_primary():
    target = _move_aside(source, stage_dir(workdir, why))
    logging.warning('%s: moved to %s', source, target)
  distributed.barrier(f'set_aside_stage_{stage_name}')
