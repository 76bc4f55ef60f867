"""The stages of a run: base training, then one distillation stage per halving.

Stage `base` trains the teacher (skipped when the config names an external
teacher); stage `distill_<N>` trains the student that samples in N steps from
the previous stage's model. Each stage has its own checkpoint directory.

A config with a `guidance` section (guided distillation, Meng et al., 2023,
arXiv 2210.03142) adds stage one, `guided_<N>`, between them: the
w-conditioned student that matches the guided teacher, sampled with the
teacher's N steps; the `distill_<N/2>` ... stages then distill it as usual
(stage two), with w drawn per example. With `guidance.num_updates` = 0 there
is no stage one: the external teacher is a stage-one student already (the
authors' stage-two configs are runs of their own).

`distillation.method = 'tract'` (TRACT, Berthelot et al., 2023) replaces the
halvings by one stage `tract_<S>` per phase of `tract.phases`.
"""

import dataclasses
from typing import Any

from etils import epath

from diffusion_distillation import objectives
from diffusion_distillation.models import diffusion_model as model_lib
from diffusion_distillation.pipeline import tracing


@dataclasses.dataclass(frozen=True)
class Stage:
  """One training run inside the pipeline."""
  index: int
  name: str
  num_updates: int
  num_sample_steps: int  # base: train_num_steps (0 = continuous); student's N
  objective: str  # its loss: a name in `objectives.OBJECTIVES`
  options: tuple = ()  # (name, value) pairs: the objective's settings

  def __post_init__(self):
    assert self.objective in objectives.OBJECTIVES, self.objective

  def objective_for(self, model) -> objectives.Objective:
    """The stage's objective for `model` (the stage's, with its dropout)."""
    return objectives.make(self.objective, model, **dict(self.options))

  @property
  def trains_student(self) -> bool:
    """Starts from the previous stage's model, its teacher."""
    return objectives.OBJECTIVES[self.objective].trains_student

  @property
  def settings(self) -> str:
    """The config section of its learning rate, anneal and EMA."""
    return objectives.OBJECTIVES[self.objective].settings

  def target_decay(self, config):
    """`step -> decay` of its objective's target network, or None."""
    return objectives.OBJECTIVES[self.objective].target_decay(config)

  @property
  def any_steps(self) -> bool:
    """Its student samples in any number of steps (a consistency model),
    not only its own `num_sample_steps`."""
    return objectives.OBJECTIVES[self.objective].any_steps

  @property
  def w_conditioned(self) -> bool:
    """Its model takes the guidance strength w."""
    return objectives.OBJECTIVES[self.objective].w_conditioned


def external_teacher(config) -> bool:
  """The first teacher is read from distillation.teacher_checkpoint_path."""
  return ('distillation' in config and
          bool(config.distillation.teacher_checkpoint_path))


def plan_stages(config) -> list[Stage]:
  """Base training (unless the teacher is given), then one stage per halving.

  Each stage's objective is decided here, once, from the config.
  """
  stages = []
  if not external_teacher(config):
    drop = config.model.cond_drop_prob
    teacher = ('guided_teacher', (('cond_drop_prob', float(drop)),)) if (
        drop > 0) else ('teacher',)
    stages.append(Stage(0, 'base', config.train.num_train_steps,
                        config.model.train_num_steps, *teacher))
  if 'distillation' not in config:
    return stages
  distill, guided = config.distillation, 'guidance' in config
  if guided and config.guidance.num_updates:
    stages.append(Stage(len(stages), guided_stage_name(distill.start_num_steps),
                        config.guidance.num_updates, distill.start_num_steps,
                        'guided_stage_one', (('w_warmup_steps', int(
                            config.guidance.w_warmup_steps)),)))
  for name, num_updates, num_steps, *objective in METHODS[distill.method](
      config):
    stages.append(Stage(len(stages), name, num_updates, num_steps,
                        *objective))
  return stages


def progressive_stages(config) -> list[tuple]:
  """Progressive distillation: one stage per halving of the steps, each
  student the next one's teacher."""
  distill = config.distillation
  student = ('guided_' if 'guidance' in config else '') + distill.target
  plan, n = [], distill.start_num_steps // 2
  while n >= distill.end_num_steps:
    plan.append((distill_stage_name(n), distill.steps_per_iter, n, student))
    n //= 2
  return plan


def tract_stages(config) -> list[tuple]:
  """TRACT: one stage per phase of `tract.phases` (student steps), each
  distilling the previous phase's student (the first, the teacher's
  `distillation.start_num_steps`)."""
  section, plan = config.tract, []
  teacher = config.distillation.start_num_steps
  for steps in section.phases:
    plan.append((f'tract_{steps}', section.updates_per_phase, steps, 'tract',
                 (('teacher_steps', teacher),
                  ('clip_x', bool(section.clip_x)))))
    teacher = steps
  return plan


def consistency_stages(config) -> list[tuple]:
  """Consistency distillation: one student, stage `consistency`, that
  samples in any number of steps (its grid: one step)."""
  c = config.consistency
  options = (('num_scales', int(c.num_scales)),
             ('sigma_min', float(c.sigma_min)),
             ('sigma_max', float(c.sigma_max)), ('solver', c.solver),
             ('distance', c.distance))
  return [('consistency', c.num_updates, 1, 'consistency', options)]


# `distillation.method` -> its students' stages after the teacher (and stage
# one of guided distillation): (name, updates, sampler steps, objective[,
# options]) each, in order; each stage distills the one before it.
METHODS = {'progressive': progressive_stages, 'tract': tract_stages,
           'consistency': consistency_stages}


def distill_stage_name(num_steps: int) -> str:
  return f'distill_{num_steps}'


def guided_stage_name(num_steps: int) -> str:
  return f'guided_{num_steps}'


def sampling_model(ctx, stage: Stage) -> model_lib.DiffusionModel:
  """The model whose parameters a stage trains (students take w if guided)."""
  return ctx.base_model.student() if stage.trains_student else ctx.base_model


def grid_guidance(config, stage: Stage):
  """The guidance strength of a stage's sample grid; None when unguided.

  The largest w of `config.eval.guidance`, for a guided teacher and for the
  w-conditioned students (which without that list use `guidance.w_min`).
  """
  values = config.eval.guidance
  if stage.w_conditioned:
    return float(max(values)) if values else float(config.guidance.w_min)
  if not stage.trains_student and values:  # a guided teacher (validated)
    return float(max(values))
  return None


def grid_steps(config, stage: Stage) -> int:
  """Sampler steps of a stage's grid: a student's own, the teacher's eval."""
  return (stage.num_sample_steps if stage.trains_student else
          config.model.eval_sampling_num_steps)


def stage_hparams(config, stage: Stage) -> dict:
  """What tells a stage apart in TensorBoard's HParams table."""
  section = config[stage.settings]
  return {'stage': stage.name, 'sampler_steps': grid_steps(config, stage),
          'learning_rate': float(section.learning_rate),
          'objective': stage.objective}


@dataclasses.dataclass
class Context:
  """What every stage of one run shares."""
  config: Any
  workdir: epath.Path
  mesh: Any
  dataset: Any
  base_model: model_lib.DiffusionModel
  # Compiled updates by (objective, updates): see loop._compiled_update.
  programs: dict = dataclasses.field(default_factory=dict)
  # main --profile_steps: by default, a trace of no steps.
  trace: tracing.StepTrace = dataclasses.field(
      default_factory=lambda: tracing.StepTrace(epath.Path(), 0))
