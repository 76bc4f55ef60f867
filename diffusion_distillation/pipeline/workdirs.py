"""Opens a finished (or partly finished) workdir for sampling and evaluation.

Everything is rebuilt from `WORKDIR/config.json` and the checkpoints' meta
records, so no data set needs to be loaded to sample.
"""

import dataclasses

from etils import epath

from diffusion_distillation import config as config_lib
from diffusion_distillation.errors import ModelError
from diffusion_distillation.models import diffusion_model as model_lib
from diffusion_distillation.parallel import sharding
from diffusion_distillation.pipeline import checkpoints
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

  @property
  def config(self):
    return self.ctx.config

  @property
  def model(self) -> model_lib.DiffusionModel:
    return self.ctx.base_model

  @property
  def mesh(self):
    return self.ctx.mesh

  def student_steps(self) -> list[int]:
    """Step counts of the finished distilled students, ascending."""
    return sorted(s.num_sample_steps for s in self.stages if s.is_distillation)

  def student_params(self, num_steps: int):
    for stage in self.stages:
      if stage.is_distillation and stage.num_sample_steps == num_steps:
        return checkpoints.final_params(self.ctx, stage)
    available = ', '.join(map(str, self.student_steps())) or 'none yet'
    raise WorkdirError(
        f'no student distilled for {num_steps} steps in '
        f'{self.ctx.workdir}; available step counts: {available} '
        "(or load the teacher, --model=teacher / model='teacher', for any "
        'step count)')

  def teacher_params(self):
    for stage in self.stages:
      if not stage.is_distillation:
        return checkpoints.final_params(self.ctx, stage)
    if stages_lib.external_teacher(self.config):
      return teachers.load_external_teacher(self.ctx, self.config)
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
  finished, meta = [], None
  for stage in stages_lib.plan_stages(config):
    if checkpoints.stage_is_complete(workdir, stage.name, stage.num_updates):
      finished.append(stage)
      meta = meta or checkpoints.final_meta(workdir, stage)
  if meta is None:
    raise WorkdirError(f'{workdir} has no finished stage yet')
  model = model_lib.DiffusionModel.from_config(
      config, tuple(meta['data_shape']), meta['num_classes'])
  ctx = stages_lib.Context(config, workdir, sharding.make_mesh(), None, model)
  return LoadedWorkdir(ctx, finished)
