"""The paper's claim, in miniature, checked on an evaluation's results.

Distillation should make few-step sampling far better than the teacher's DDIM
at the same step count, and nearly as good as the teacher's many-step DDIM:
the N-step student's Frechet distance must be at most half of the teacher's
N-step DDIM one and at most twice the teacher's best DDIM one (its most
steps).
"""

from diffusion_distillation.errors import UserError


def _steps_of(rows, model: str) -> list[int]:
  """The step counts of `model`'s DDIM rows, ascending."""
  return sorted({r['steps'] for r in rows
                 if (r['model'], r['sampler']) == (model, 'ddim')})


def _check_rows(rows, steps: int):
  """Refuses a check that the results cannot answer, naming what they hold."""
  students, teachers = _steps_of(rows, 'distilled'), _steps_of(rows, 'teacher')
  if steps not in students:
    raise UserError(f'steps={steps}: no {steps}-step student in the results; '
                    f'evaluated students: '
                    f'{", ".join(map(str, students)) or "none"}')
  if steps not in teachers:
    raise UserError(f'steps={steps}: no teacher DDIM row for {steps} steps in '
                    'the results (rerun evaluate with --teacher_steps '
                    f'including {steps}); teacher DDIM rows: '
                    f'{", ".join(map(str, teachers)) or "none"}')


def _value(rows, metric, model, sampler, steps):
  for row in rows:
    if (row['model'], row['sampler'], row['steps']) == (model, sampler, steps):
      return row.get(metric)
  return None


def check(results: dict, steps: int = 4) -> list[dict]:
  """The claims as records {claim, student, reference, bound, holds}.

  Raises:
    UserError: the results hold no `steps`-step student or teacher DDIM row.
  """
  metric = results['metric_names'][0]  # the Frechet distance comes first
  rows = results['rows']
  _check_rows(rows, steps)
  student = _value(rows, metric, 'distilled', 'ddim', steps)
  teacher_same = _value(rows, metric, 'teacher', 'ddim', steps)
  best_steps = _steps_of(rows, 'teacher')[-1]
  teacher_best = _value(rows, metric, 'teacher', 'ddim', best_steps)
  claims = [
      (f'{metric}(distilled, {steps} steps) <= 0.5 * '
       f'{metric}(teacher DDIM, {steps} steps)', teacher_same, 0.5),
      (f'{metric}(distilled, {steps} steps) <= 2 * '
       f'{metric}(teacher DDIM, {best_steps} steps)', teacher_best, 2.0),
  ]
  out = []
  for claim, reference, factor in claims:
    ok = None not in (student, reference)
    out.append({'claim': claim, 'student': student, 'reference': reference,
                'bound': factor * reference if ok else None,
                'holds': ok and student <= factor * reference})
  return out
