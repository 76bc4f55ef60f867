"""The training objectives, one module each, and the table that names them.

A stage's objective is picked once, by name, when the run's stages are
planned (pipeline/stages.py); the trainer, the update, the optimizer and the
API only call the interface of `objective.Objective`. A new objective is a
new module and one row here (and its name among the config's choices,
config/choices.py, when a config field selects it).
"""

from diffusion_distillation.objectives import consistency
from diffusion_distillation.objectives import guided_distillation
from diffusion_distillation.objectives import guided_stage_one
from diffusion_distillation.objectives import progressive
from diffusion_distillation.objectives import teacher
from diffusion_distillation.objectives import tract
from diffusion_distillation.objectives import two_step
from diffusion_distillation.objectives.objective import Objective

OBJECTIVES = {
    'teacher': teacher.Teacher,
    'guided_teacher': teacher.GuidedTeacher,
    'progressive': progressive.Progressive,
    'two_step': two_step.TwoStep,
    'guided_stage_one': guided_stage_one.GuidedStageOne,
    'guided_progressive': guided_distillation.GuidedProgressive,
    'guided_two_step': guided_distillation.GuidedTwoStep,
    'tract': tract.Tract,
    'consistency': consistency.Consistency,
}


def make(name: str, model, **options) -> Objective:
  """The objective `name` of the table for `model` (the stage's), with the
  `options` its constructor takes (e.g. a guided teacher's label dropout)."""
  return OBJECTIVES[name](model, **options)
