"""The stages of a run: base training, then one distillation stage per halving.

Stage `base` trains the teacher (skipped when the config names an external
teacher); stage `distill_<N>` trains the student that samples in N steps from
the previous stage's model. Each stage has its own checkpoint directory.

A config with a `guidance` section (guided distillation, Meng et al., 2023,
arXiv 2210.03142) adds stage one, `guided_<N>`, between them: the
w-conditioned student that matches the guided teacher, sampled with the
teacher's N steps; the `distill_<N/2>` ... stages then distill it as usual
(stage two), with w drawn per example.
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
  is_distillation: bool  # starts from the previous stage's model
  guided_stage_one: bool = False  # matches the guided teacher (guided_<N>)


def plan_stages(config) -> list[Stage]:
  """Base training (unless the teacher is given), then one stage per halving."""
  stages = []
  distill = config.get('distillation')
  if not (distill and distill.teacher_checkpoint_path):
    stages.append(Stage(0, 'base', config.train.num_train_steps,
                        config.model.train_num_steps, False))
  if distill and config.get('guidance'):
    stages.append(Stage(len(stages), guided_stage_name(distill.start_num_steps),
                        config.guidance.num_updates, distill.start_num_steps,
                        True, guided_stage_one=True))
  if distill:
    n = distill.start_num_steps // 2
    while n >= distill.end_num_steps:
      stages.append(Stage(len(stages), distill_stage_name(n),
                          distill.steps_per_iter, n, True))
      n //= 2
  return stages


def distill_stage_name(num_steps: int) -> str:
  return f'distill_{num_steps}'


def guided_stage_name(num_steps: int) -> str:
  return f'guided_{num_steps}'


def guided_kind(config, stage: Stage):
  """How `stage` trains in a guided run; None: as in an unguided one.

  'base': the teacher with label dropout (`model.cond_drop_prob` > 0);
  'guided': stage one; 'distill': stage two, w-conditioned (a `guidance`
  section). See `pipeline/guided_loss.py`.
  """
  if stage.guided_stage_one:
    return 'guided'
  if stage.is_distillation:
    return 'distill' if config.get('guidance') else None
  return 'base' if config.model.get('cond_drop_prob', 0.) > 0 else None


def sampling_model(ctx, stage: Stage) -> model_lib.DiffusionModel:
  """The model whose parameters a stage trains (students take w if guided)."""
  return ctx.base_model.student() if stage.is_distillation else ctx.base_model


def grid_guidance(config, stage: Stage):
  """The guidance strength of a stage's sample grid; None when unguided.

  The largest w of `config.eval.guidance`, for a guided teacher and for the
  w-conditioned students (which without that list use `guidance.w_min`).
  """
  values = tuple((config.get('eval') or {}).get('guidance') or ())
  if stage.is_distillation and config.get('guidance'):
    return float(max(values)) if values else float(config.guidance.w_min)
  if stage.is_distillation or not values or not (
      config.model.get('cond_drop_prob', 0.) > 0):
    return None
  return float(max(values))


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
