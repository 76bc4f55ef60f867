"""The stages of a run: base training, then one distillation stage per halving.

Stage `base` trains the teacher (skipped when the config names an external
teacher); stage `distill_<N>` trains the student that samples in N steps from
the previous stage's model. Each stage has its own checkpoint directory.
"""

import dataclasses
from typing import Any

from etils import epath

from diffusion_distillation.models import diffusion_model as model_lib


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
      stages.append(Stage(len(stages), distill_stage_name(n),
                          distill.steps_per_iter, n, True))
      n //= 2
  return stages


def distill_stage_name(num_steps: int) -> str:
  return f'distill_{num_steps}'


def grid_steps(config, stage: Stage) -> int:
  """Sampler steps of a stage's grid: a student's own, the teacher's eval."""
  return (stage.num_sample_steps if stage.is_distillation else
          config.model.eval_sampling_num_steps)


@dataclasses.dataclass
class Context:
  """What every stage of one run shares."""
  config: Any
  workdir: epath.Path
  mesh: Any
  dataset: Any
  base_model: model_lib.DiffusionModel
