"""What one evaluation does: its settings, checked, and the rows it samples.

Arguments override the workdir's `config.eval` (whose fields and defaults
are declared in config/fields.py, as is every argument's check). Every
student is sampled with DDIM at its own step count; the teacher with each
sampler at 1, 2, 4, ... steps up to `config.eval.teacher_max_steps`, or at
the given `teacher_steps` (else `config.eval.teacher_steps`). `config.eval.student_samplers` adds samplers
for the students ('stochastic', Meng et al. 2023). A guided run adds a
guidance axis: every row is sampled at each w of `config.eval.guidance`.
"""

import dataclasses
import os
from typing import Optional, Sequence

from diffusion_distillation import config as config_lib
from diffusion_distillation.config import choices
from diffusion_distillation import paths
from diffusion_distillation.errors import UserError



class EvalError(UserError):
  """An evaluation request that cannot be served (bad flag or setting)."""


@dataclasses.dataclass(frozen=True)
class Settings:
  """What one evaluation does, after merging flags into `config.eval`."""
  metric: str
  num_samples: int
  batch_size: int
  samplers: tuple[str, ...]
  teacher_steps: tuple[int, ...]
  seed: int
  inception_path: str
  cache_dir: str
  student_samplers: tuple[str, ...] = ('ddim',)
  guidance: tuple[float, ...] = ()  # guidance strengths w; () = unguided
  workdir: str = ''  # the evaluated run's (an image folder's index, stats)


def powers_of_two(max_steps: int) -> tuple[int, ...]:
  """1, 2, 4, ... up to `max_steps` (inclusive when it is a power of two)."""
  steps, n = [], 1
  while n <= max_steps:
    steps.append(n)
    n *= 2
  return tuple(steps)


def parse_int_list(value, name: str) -> tuple[int, ...]:
  """'1,2,4' or a sequence -> sorted unique ints; 'none' or '' -> ()."""
  if isinstance(value, str):
    items = [] if value.strip().lower() in ('', 'none') else value.split(',')
  else:
    items = list(value)
  out = set()
  for item in items:
    try:
      n = int(str(item).strip())
    except ValueError:
      raise EvalError(f'{name}: {item!r} is not an integer') from None
    if n < 1:
      raise EvalError(f'{name}: step counts must be >= 1, got {n}')
    out.add(n)
  return tuple(sorted(out))


def parse_samplers(value) -> tuple[str, ...]:
  """'ddim,ancestral' or a sequence -> known sampler names, first use kept."""
  items = value.split(',') if isinstance(value, str) else list(value)
  samplers = tuple(dict.fromkeys(str(s).strip() for s in items))
  choices.require(choices.SAMPLER_LIST, 'samplers', samplers, EvalError)
  return samplers


def _check(field: str, value, name: str):
  """`value` of an argument against the declaration of `config.<field>`."""
  wrong = config_lib.FIELDS[field].problem(value)
  if wrong:
    raise EvalError(f'{name} {wrong}')
  return value


def check_arguments(*, num_samples=None, samplers=None, teacher_steps=None,
                    metric=None, batch_size=None):
  """Validates the explicitly given arguments (cheap: before any loading).

  As the `eval.*` fields they override: one declaration of each.
  """
  if num_samples is not None:
    _check('eval.num_samples', num_samples, 'num_samples')
  if batch_size is not None:
    _check('eval.batch_size', batch_size, 'batch_size')
  if samplers is not None:
    parse_samplers(samplers)
  if teacher_steps is not None:
    parse_int_list(teacher_steps, 'teacher_steps')
  if metric is not None:
    _check('eval.metric', metric, 'metric')


def _default_teacher_steps(config) -> tuple[int, ...]:
  if config.eval.teacher_steps:
    return parse_int_list(config.eval.teacher_steps,
                          'config.eval.teacher_steps')
  return powers_of_two(config.eval.teacher_max_steps)


def resolve_settings(config, *, num_samples=None, samplers=None,
                     teacher_steps=None, metric=None, inception_path=None,
                     seed=0, batch_size=None, cache_dir=None,
                     workdir='') -> Settings:
  """Arguments override the workdir's (complete, validated) `config.eval`."""
  check_arguments(num_samples=num_samples, samplers=samplers,
                  teacher_steps=teacher_steps, metric=metric,
                  batch_size=batch_size)
  ev = config.eval
  given = lambda value, default: default if value is None else value
  if teacher_steps is None:
    teacher_steps = _default_teacher_steps(config)
  settings = Settings(
      metric=given(metric, ev.metric),
      num_samples=given(num_samples, ev.num_samples),
      batch_size=given(batch_size, ev.batch_size),
      samplers=parse_samplers(given(samplers, ev.samplers)),
      teacher_steps=parse_int_list(teacher_steps, 'teacher_steps'),
      seed=_check('seed', seed, 'seed'),
      inception_path=given(inception_path, ev.inception_path),
      cache_dir=cache_dir or paths.default_cache_dir(),
      student_samplers=parse_samplers(ev.student_samplers),
      guidance=tuple(float(w) for w in ev.guidance),
      workdir=os.fspath(workdir))
  dataset = config.dataset.name
  if settings.metric == 'digits' and dataset != 'digits':
    raise EvalError(f"metric 'digits' only applies to the digits data set, "
                    f"not {dataset!r}; use --metric=inception")
  return settings


@dataclasses.dataclass(frozen=True)
class RowSpec:
  """One row of the results: a model sampled with a sampler and step count."""
  model: str  # 'distilled' or 'teacher'
  sampler: str
  steps: int
  guidance: Optional[float] = None  # the guidance strength w of a guided run


def plan_rows(student_steps: Sequence[int],
              settings: Settings) -> list[RowSpec]:
  """Per guidance strength (if guided): the students per student sampler
  (most steps first; a noisy sampler from 2 steps, where it differs from
  DDIM), then the teacher per sampler."""
  rows = []
  for w in settings.guidance or (None,):
    for sampler in settings.student_samplers:
      rows += [RowSpec('distilled', sampler, n, w)
               for n in sorted(student_steps, reverse=True)
               if sampler == 'ddim' or n > 1]
    for sampler in settings.samplers:
      rows += [RowSpec('teacher', sampler, n, w)
               for n in settings.teacher_steps]
  return rows
