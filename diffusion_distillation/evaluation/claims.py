"""The paper's claim, in miniature, checked on an evaluation's results.

Distillation should make few-step sampling far better than the teacher's DDIM
at the same step count, and nearly as good as the teacher's many-step DDIM:
the N-step student's Frechet distance must be at most half of the teacher's
N-step DDIM one and at most twice the teacher's best DDIM one (its most
steps).
"""


def _value(rows, metric, model, sampler, steps):
  for row in rows:
    if (row['model'], row['sampler'], row['steps']) == (model, sampler, steps):
      return row.get(metric)
  return None


def check(results: dict, steps: int = 4) -> list[dict]:
  """The claims as records {claim, student, reference, bound, holds}."""
  metric = results['metric_names'][0]  # the Frechet distance comes first
  rows = results['rows']
  student = _value(rows, metric, 'distilled', 'ddim', steps)
  teacher_same = _value(rows, metric, 'teacher', 'ddim', steps)
  best_steps = max(r['steps'] for r in rows
                   if r['model'] == 'teacher' and r['sampler'] == 'ddim')
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
