"""Sample quality against sampler steps: distilled students vs. the teacher.

Each row (`settings.plan_rows`) draws `num_samples` images with
`generation.generate` (seeded, batched, sharded over all devices; every row
uses the same seed, so rows share their initial noise) and scores them with
the chosen metric (`scorers`). Process 0 rewrites the outputs (`report`) after
every row, so an interrupted evaluation keeps what it measured. One
evaluation at a time per workdir: it holds `WORKDIR/eval/.lock` (a second
one stops in one line naming the first).

Every row has the same shapes and `generate` keeps one compiled sampler per
(model, sampler) with the step count as data, so the evaluation compiles once
per sampler; the first row of each sampler's timing includes that compilation.
"""

import dataclasses
import datetime
import json
import math
import time
from typing import Optional

from absl import logging
from etils import epath
import jax

from diffusion_distillation.diffusion import sampling
from diffusion_distillation.evaluation import bpd
from diffusion_distillation.evaluation import dashboards
from diffusion_distillation.evaluation import report
from diffusion_distillation.evaluation import scorers
from diffusion_distillation.evaluation.settings import check_arguments
from diffusion_distillation.evaluation.settings import EvalError
from diffusion_distillation.evaluation.settings import plan_rows
from diffusion_distillation.evaluation.settings import resolve_settings
from diffusion_distillation.models import generation
from diffusion_distillation.pipeline import progress
from diffusion_distillation.pipeline import workdir_lock


def run_evaluation(workdir, *, num_samples: Optional[int] = None,
                   samplers=None, teacher_steps=None,
                   metric: Optional[str] = None,
                   inception_path: Optional[str] = None, seed: int = 0,
                   batch_size: Optional[int] = None,
                   cache_dir: Optional[str] = None,
                   print_table: bool = True,
                   inception_divisor: int = 1,
                   only_if_changed: bool = False) -> dict:
  """Scores every finished student and the teacher; writes WORKDIR/eval.

  Arguments left as None come from the workdir's `config.eval` (see
  `settings.resolve_settings`; `cache_dir` defaults to
  `paths.default_cache_dir()`). `samplers` and `teacher_steps` take
  sequences or comma-separated strings (`teacher_steps='none'`: no teacher
  rows). `inception_divisor` is for tests only (a reduced-width Inception
  network). `only_if_changed` (training's evaluation after a rerun): a
  complete results.json of the same settings and the same final checkpoints
  is returned as it is, nothing sampled.

  Returns the content of results.json: metadata and `rows`, each
  `{model, sampler, steps, <metric values>, seconds, sample_seconds,
  metric_seconds}`.

  Raises:
    EvalError, workdirs.WorkdirError, generation.SampleError,
      workdir_lock.WorkdirAccessError (WORKDIR/eval cannot be written): for
      requests that cannot be served (all UserErrors with a one-line message).
  """
  check_arguments(num_samples=num_samples, samplers=samplers,
                  teacher_steps=teacher_steps, metric=metric,
                  batch_size=batch_size)
  t_start = time.time()
  _check_writable(workdir)
  loaded = _open_workdir(workdir)
  settings = resolve_settings(
      loaded.config, num_samples=num_samples, samplers=samplers,
      teacher_steps=teacher_steps, metric=metric,
      inception_path=inception_path, seed=seed, batch_size=batch_size,
      cache_dir=cache_dir, workdir=workdir)
  inputs = _inputs(loaded, settings)
  if only_if_changed and (current := _current_results(workdir, inputs)):
    logging.info('%s is up to date (same settings, same models): not '
                 'evaluated again', epath.Path(workdir) / 'eval')
    return current
  bits_per_dim = settings.metric == 'bpd'  # the teacher's likelihood only
  specs = plan_rows(loaded.student_steps(), settings)
  if not specs and not bits_per_dim:
    raise EvalError('nothing to evaluate: no finished student and no teacher '
                    'step counts')
  if not bits_per_dim:  # before WORKDIR/eval exists: weights may be missing
    t0 = time.time()
    scorer = scorers.make_metric(loaded.config, settings, inception_divisor)
    logging.info('metric %s ready in %.1fs', settings.metric, time.time() - t0)
  with workdir_lock.hold(epath.Path(workdir) / 'eval'):  # one at a time
    if bits_per_dim:
      return bpd.run_bpd(workdir, loaded, settings)
    results = _results_header(workdir, loaded, settings, scorer, inputs)
    return _score_rows(workdir, loaded, settings, specs, scorer, results,
                       t_start, print_table)


def _score_rows(workdir, loaded, settings, specs, scorer, results,
                t_start: float, print_table: bool) -> dict:
  """Samples and scores the rows `specs` into `results` (its header);
  writes and returns them."""
  _evaluate_rows(workdir, loaded, settings, specs, scorer, results, t_start)
  if jax.process_index() == 0:
    logging.info('wrote %s', epath.Path(workdir) / 'eval')
    if print_table:
      print(report.format_markdown(results), flush=True)
  return results


def _check_writable(workdir):
  """WORKDIR/eval can be written (by process 0), checked before sampling.

  A write probe, not a permission check: root ignores file modes. Before
  the first evaluation, WORKDIR itself is probed (eval is made there), so
  a request rejected later leaves no empty eval directory behind.
  """
  if not workdir or jax.process_index() != 0:
    return
  workdir_lock.check_directory(workdir, f'--workdir={workdir}')
  workdir = epath.Path(workdir)
  if (workdir / 'config.json').exists():
    eval_dir = workdir / 'eval'
    workdir_lock.check_writable(eval_dir if eval_dir.exists() else workdir)


def _open_workdir(workdir):
  """`workdirs.open_workdir`, after cheap checks of the path."""
  if not workdir:
    raise EvalError('--workdir is required')
  if not (epath.Path(workdir) / 'config.json').exists():
    # Checked here too, so a mistyped path fails before the slow imports.
    raise EvalError(f'{workdir} is not a training workdir (no config.json)')
  from diffusion_distillation.pipeline import workdirs  # pylint: disable=g-import-not-at-top
  return workdirs.open_workdir(workdir)


def _inputs(loaded, settings) -> dict:
  """What the numbers of results.json depend on: the settings that change
  samples or scores (not the batch size: an image depends on its seed and
  index only) and every evaluated model's final checkpoint (its checksum)."""
  from diffusion_distillation.pipeline import finished_stages  # pylint: disable=g-import-not-at-top
  return dict(
      settings={k: v for k, v in dataclasses.asdict(settings).items()
                if k not in ('batch_size', 'cache_dir', 'workdir')},
      models={stage.name: finished_stages.final_meta(
          loaded.ctx.workdir, stage).get('checksum')
              for stage in loaded.stages})


def _current_results(workdir, inputs: dict) -> Optional[dict]:
  """The complete results.json made from `inputs`, if there is one."""
  path = epath.Path(workdir) / 'eval' / report.RESULTS_JSON
  try:
    results = json.loads(path.read_text())
  except (OSError, ValueError):
    return None
  saved = json.loads(json.dumps(inputs))  # tuples as JSON has them
  return (results if results.get('complete') and
          results.get('inputs') == saved else None)


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec='seconds')


def _results_header(workdir, loaded, settings, scorer, inputs) -> dict:
  """results.json before its first row."""
  return dict(
      workdir=str(workdir), dataset=loaded.config.dataset.name,
      metric=settings.metric, metric_names=list(scorer.value_names),
      num_samples=settings.num_samples, seed=settings.seed,
      batch_size=settings.batch_size, samplers=list(settings.samplers),
      teacher_steps=list(settings.teacher_steps),
      student_steps=loaded.student_steps(),
      missing_students=loaded.missing_steps(), date=_now(),
      devices=f'{jax.device_count()} x {jax.devices()[0].device_kind}',
      metric_info=scorer.info, inputs=inputs,
      complete=False, seconds=None, rows=[])


def _row_progress(i: int, count: int, t_rows: float) -> str:
  """`row 3/15, ETA 1m 10s`: the rows left at the mean time of those done."""
  if not i:
    return f'row 1/{count}'
  left = (time.time() - t_rows) / i * (count - i)
  return f'row {i + 1}/{count}, ETA {progress.format_duration(left)}'


def _evaluate_rows(workdir, loaded, settings, specs, scorer, results,
                   t_start: float):
  """Samples and scores every row into `results`, writing after each.

  Also writes each row's values to TensorBoard (dashboards.py).
  """
  teacher = (loaded.teacher_params()
             if any(s.model == 'teacher' for s in specs) else None)
  write = jax.process_index() == 0
  curves = dashboards.QualityCurves(workdir, loaded, scorer.value_names,
                                    enabled=write)
  logging.info('%d rows, %d samples each; the first row of each sampler '
               'includes compiling it', len(specs), settings.num_samples)
  t_rows = time.time()
  for i, spec in enumerate(specs):
    params = (loaded.student_params(spec.steps) if spec.model == 'distilled'
              else teacher)
    row = _evaluate_row(loaded, params, spec, settings, scorer,
                        _row_progress(i, len(specs), t_rows))
    results['rows'].append(row)
    curves.add(row)
    last = i + 1 == len(specs)
    if last:
      results.update(complete=True, seconds=round(time.time() - t_start, 1))
    if write:  # after every row: an interrupted run keeps what it measured
      report.write_results(workdir, results)


def _finite_or_none(value):
  value = float(value)
  return value if math.isfinite(value) else None


def _evaluate_row(loaded, params, spec, settings, scorer, where: str):
  """One row: samples `spec`'s model and scores the samples."""
  t0 = time.time()
  samples, labels = generation.generate(
      loaded.model.sampled(spec.model == 'distilled'), params,
      mesh=loaded.mesh, num_samples=settings.num_samples,
      num_steps=spec.steps, seed=settings.seed, sampler=spec.sampler,
      batch_size=settings.batch_size, guidance=spec.guidance)
  t1 = time.time()
  try:
    values = scorer.compute(samples)
  except ValueError as e:  # e.g. a non-finite matrix square root
    logging.warning('%s %s %d steps: metric failed (%s)', spec.model,
                    spec.sampler, spec.steps, e)
    values = {name: float('nan') for name in scorer.value_names}
  if scorer.class_accuracy and loaded.model.num_classes > 1:
    values['class_accuracy'] = scorer.class_accuracy(samples, labels)
  t2 = time.time()
  row = dict(model=spec.model, sampler=spec.sampler, steps=spec.steps,
             nfe=sampling.network_evaluations(
                 spec.sampler, spec.steps, guided_teacher=(
                     spec.model == 'teacher' and spec.guidance is not None
                     and not loaded.model.w_teacher)))
  if spec.model == 'distilled':
    row['method'] = loaded.method
  if spec.guidance is not None:
    row['guidance'] = spec.guidance
  row.update({k: _finite_or_none(v) for k, v in values.items()})
  row.update(seconds=round(t2 - t0, 2), sample_seconds=round(t1 - t0, 2),
             metric_seconds=round(t2 - t1, 2))
  logging.info(
      '%s: %-9s %-9s %4d steps%s: %s (sampling %.1fs, metric %.1fs)', where,
      spec.model, spec.sampler, spec.steps,
      '' if spec.guidance is None else f', w={spec.guidance:g}',
      ' '.join(f'{k}={report.format_value(row[k])}'
               for k in scorer.value_names),
      t1 - t0, t2 - t1)
  return row
