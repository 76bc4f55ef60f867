"""One table for the students of several workdirs (`evaluate --compare`).

Progressive distillation, TRACT and consistency distillation each run in a
workdir of their own (one `distillation.method` per run). Distilled from the
same teacher (`distillation.teacher_checkpoint_path` naming the first
workdir, or the same base config and seed, which trains the same teacher bit
for bit), their students belong in one table against network evaluations,
beside the teacher's samplers and solvers. Each workdir is evaluated as
`evaluate` does it alone (its own WORKDIR/eval, with the same settings, so
every row shares its seed and initial noise); the first workdir's rows and
the other workdirs' student rows are then written together as
WORKDIR/eval/comparison.{json,md,png}. A workdir whose results.json has
the same settings and models already is not sampled again.
"""

from typing import Sequence

from etils import epath
import jax

from diffusion_distillation.evaluation import evaluate
from diffusion_distillation.evaluation import report
from diffusion_distillation.evaluation.settings import EvalError

COMPARISON = 'comparison'


def run_comparison(workdir, compare: Sequence[str], *,
                   print_table: bool = True, **options) -> dict:
  """Evaluates `workdir` and the students of each `compare` workdir; returns
  (and writes) the combined results.

  `options` are `evaluate.run_evaluation`'s; the compared workdirs' teacher
  rows are left out (`teacher_steps='none'`). The result is results.json's
  shape, with `compared` (the other workdirs) and `same_teacher` (whether
  every workdir's teacher has the same parameters).
  """
  compare = [w for w in compare if w]
  if not compare:
    raise EvalError('--compare: name at least one other workdir')
  if any(_same_path(w, workdir) for w in compare):
    raise EvalError(f'--compare: {workdir} is already the evaluated workdir')
  # A workdir evaluated before with the same settings and models is not
  # sampled again; the other workdirs' students only.
  options = dict(options, print_table=False, only_if_changed=True)
  first = evaluate.run_evaluation(workdir, **options)
  others = [evaluate.run_evaluation(w, **dict(options, teacher_steps='none'))
            for w in compare]
  combined = combine(first, others,
                     same_teacher=_same_teacher([workdir, *compare]))
  if jax.process_index() == 0:
    write_comparison(workdir, combined)
    if print_table:
      print(report.format_markdown(combined), flush=True)
  return combined


def combine(first: dict, others: Sequence[dict], *, same_teacher: bool):
  """`first`'s results with the distilled rows of `others`: every workdir's
  students (so the table's first columns), then `first`'s teacher rows."""
  students = lambda results: [r for r in results['rows']
                              if r['model'] == 'distilled']
  rows = students(first)
  for results in others:
    rows += [dict(r, workdir=results['workdir']) for r in students(results)]
  rows += [r for r in first['rows'] if r['model'] != 'distilled']
  return dict(first, rows=rows, compared=[r['workdir'] for r in others],
              same_teacher=same_teacher,
              complete=all(r['complete'] for r in (first, *others)))


def write_comparison(workdir, combined: dict) -> dict[str, epath.Path]:
  """WORKDIR/eval/comparison.{json,md,png}, each written whole."""
  return report.write_results(workdir, combined, name=COMPARISON)


def _same_path(a, b) -> bool:
  return epath.Path(a).resolve() == epath.Path(b).resolve()


def _same_teacher(workdirs) -> bool:
  """Whether the workdirs' teachers have the same parameters (checksums)."""
  from diffusion_distillation.pipeline import checkpoints  # pylint: disable=g-import-not-at-top
  from diffusion_distillation.pipeline import workdirs as workdirs_lib  # pylint: disable=g-import-not-at-top
  sums = {checkpoints.state_checksum(
      workdirs_lib.open_workdir(w).teacher_params()) for w in workdirs}
  return len(sums) == 1
