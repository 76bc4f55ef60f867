"""Opens a finished (or partly finished) workdir for sampling and evaluation.

Everything is rebuilt from `WORKDIR/config.json` and the checkpoints' meta
records, so no data set needs to be loaded to sample.
"""

import dataclasses

from absl import logging
from etils import epath

from diffusion_distillation import config as config_lib
from diffusion_distillation.errors import ModelError
from diffusion_distillation.models import diffusion_model as model_lib
from diffusion_distillation.parallel import sharding
from diffusion_distillation.pipeline import finished_stages
from diffusion_distillation.pipeline import stages as stages_lib
from diffusion_distillation.pipeline import teachers
from diffusion_distillation.pipeline import workdir_lock


class WorkdirError(ModelError):
  """The workdir is missing, or lacks the requested model."""


@dataclasses.dataclass
class LoadedWorkdir:
  """A workdir's config, model and finished stages."""
  ctx: stages_lib.Context
  stages: list  # finished stages, in pipeline order
  # Unfinished stages that later finished ones followed: their checkpoints
  # were deleted (or damaged) after the run.
  missing: list = dataclasses.field(default_factory=list)

  def missing_steps(self) -> list[int]:
    """Step counts of the students whose stage is `missing`, ascending."""
    return sorted(s.num_sample_steps for s in self.missing
                  if s.trains_student)

  @property
  def config(self):
    return self.ctx.config

  @property
  def model(self) -> model_lib.DiffusionModel:
    return self.ctx.base_model

  @property
  def mesh(self):
    return self.ctx.mesh

  @property
  def method(self):
    """How its students were distilled (`distillation.method`); None for a
    teacher-only run."""
    config = self.config
    return config.distillation.method if 'distillation' in config else None

  def student_steps(self) -> list[int]:
    """Step counts of the finished distilled students, ascending; a
    consistency student's: its `consistency.eval_steps`."""
    steps = set()
    for s in self.stages:
      if s.trains_student:
        steps.update(self.config.consistency.eval_steps if s.any_steps else
                     (s.num_sample_steps,))
    return sorted(steps)

  def student_params(self, num_steps: int):
    for stage in self.stages:
      if stage.trains_student and (stage.any_steps or
                                   stage.num_sample_steps == num_steps):
        return finished_stages.final_params(self.ctx, stage)
    available = ', '.join(map(str, self.student_steps())) or 'none yet'
    gone = ('; its checkpoints are missing (deleted after the run?)'
            if num_steps in self.missing_steps() else '')
    raise WorkdirError(
        f'no student distilled for {num_steps} steps in '
        f"{self.ctx.workdir}{gone}; available step counts: {available} (or "
        "load the teacher, model='teacher', for any step count)")

  def teacher_params(self):
    for stage in self.stages:
      if not stage.trains_student:
        return finished_stages.final_params(self.ctx, stage)
    if stages_lib.external_teacher(self.config):
      return teachers.load_external_teacher(self.ctx, self.config)
    if any(not s.trains_student for s in self.missing):
      raise WorkdirError(f'the teacher of {self.ctx.workdir} is missing: its '
                         'stage directory (checkpoints/base) has no final '
                         'checkpoint, though later stages finished')
    raise WorkdirError(f'the teacher of {self.ctx.workdir} has not finished '
                       'training yet')


def open_workdir(workdir) -> LoadedWorkdir:
  """Loads config and finished stages; raises WorkdirError when there are none."""
  if not workdir:
    raise WorkdirError('--workdir is required')
  workdir = epath.Path(workdir)
  workdir_lock.check_directory(workdir, f'--workdir={workdir}')
  config_path = workdir / 'config.json'
  if not config_path.exists():
    raise WorkdirError(f'{workdir} is not a training workdir (no config.json)')
  config = config_lib.complete(config_lib.read_saved_config(config_path))
  config_lib.validate_model(config)
  finished, unfinished, missing, meta = [], [], [], None
  for stage in stages_lib.plan_stages(config):
    if finished_stages.stage_is_complete(workdir, stage.name, stage.num_updates):
      finished.append(stage)
      missing += unfinished
      unfinished = []
      meta = meta or finished_stages.final_meta(workdir, stage)
    else:
      unfinished.append(stage)
  if meta is None:
    raise WorkdirError(f'{workdir} has no finished stage yet')
  if missing:
    logging.warning(
        '%s: stage %s has no final checkpoint though later stages finished '
        '(deleted after the run?): its model is left out; rerun the training '
        'command to train it again', workdir,
        ', '.join(s.name for s in missing))
  model = model_lib.DiffusionModel.from_config(
      config, tuple(meta['data_shape']), meta['num_classes'])
  ctx = stages_lib.Context(config, workdir, sharding.make_mesh(), None, model)
  return LoadedWorkdir(ctx, finished, missing)
