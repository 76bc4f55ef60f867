r"""Checks the paper's claim, in miniature, on an evaluated digits workdir.

    python -m diffusion_distillation.main --config=configs/digits.py \
        --workdir=workdirs/digits       # trains, distills, evaluates
    python -m diffusion_distillation.quality_claims --workdir=workdirs/digits

Distillation should make few-step sampling far better than the teacher's DDIM
at the same step count, and nearly as good as the teacher's many-step DDIM:
the 4-step student's Frechet distance must be at most half of the teacher's
4-step DDIM one and at most twice the teacher's best DDIM one (its most
steps). Prints one JSON object per claim and the whole table; exits 1 if a
claim fails. A benchmark, not a unit test: it needs a fully trained workdir.
"""

import json
import sys

from absl import app
from absl import flags
from etils import epath

_WORKDIR = flags.DEFINE_string('workdir', None, 'An evaluated workdir.')
_STEPS = flags.DEFINE_integer('steps', 4, 'Student step count to check.')


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


def main(argv):
  del argv
  if not _WORKDIR.value:
    sys.exit('error: --workdir is required')
  path = epath.Path(_WORKDIR.value) / 'eval' / 'results.json'
  if not path.exists():
    sys.exit(f'error: {path} does not exist; run '
             'python -m diffusion_distillation.evaluate first')
  results = json.loads(path.read_text())
  claims = check(results, _STEPS.value)
  for claim in claims:
    print(json.dumps(claim))
  table = epath.Path(_WORKDIR.value) / 'eval' / 'results.md'
  if table.exists():
    print(table.read_text())
  if not all(c['holds'] for c in claims):
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
