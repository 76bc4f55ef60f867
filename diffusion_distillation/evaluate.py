r"""Sample quality against sampler steps: distilled students vs. the teacher.

    python -m diffusion_distillation.evaluate --workdir=/tmp/digits \
        [--num_samples=500] [--samplers=ddim,ancestral] \
        [--teacher_steps=1,2,4,8] [--metric=digits|inception] \
        [--inception_path=/path/classify_image_graph_def.pb] [--seed=0] \
        [--batch_size=500] [--cache_dir=...]

Every finished distilled student is sampled with DDIM at its own step count;
the teacher is sampled with each of `--samplers` at 1, 2, 4, ... steps up to
`config.eval.teacher_max_steps` (or at `--teacher_steps`; `none` skips the
teacher). Each row draws `--num_samples` images with `sample.generate` (seeded,
batched, sharded over all devices; every row uses the same seed, so rows share
their initial noise) and scores them:

* `--metric=digits` (8x8 digits only): `digits_fd` and `digits_is` from the
  offline digits classifier (`metrics/digits_classifier.py`). Not comparable
  with any published number.
* `--metric=inception`: `fid` against the Inception pool3 statistics of the
  data set's *train* split (the paper's CIFAR-10 FIDs use the 50k train
  images), and `is` (Inception Score, 10 splits, from the unbiased logits).
  Needs the 2015-12-05 Inception weights (`--inception_path`).

Flags default to the workdir's `config.eval`; given flags override it.

Outputs (process 0 writes them, rewritten after every row so an interrupted
evaluation keeps what it measured; `complete` turns true at the end):

    WORKDIR/eval/results.json        rows + metadata
    WORKDIR/eval/results.md          Markdown tables (main metric and IS)
    WORKDIR/eval/quality_vs_steps.png

Caches (local files, shared by all workdirs and written atomically): the
digits classifier and its reference statistics, and the Inception reference
statistics (`fid_stats/<dataset>_<split>_<count>_<weights hash>.npz`) live in
`--cache_dir`, else `$DD_CACHE_DIR`, else `$XDG_CACHE_HOME/diffusion_distillation`
(default `~/.cache/diffusion_distillation`). Delete a file to recompute it.

Cost: sampling dominates. `sample.generate` keeps one compiled sampler per
(model, sampler) with the step count as data, and every row has the same
shapes, so the whole evaluation compiles once per sampler; the first row of
each sampler's timing includes that compilation. Metrics are computed by every
process on its local devices (the samples are on every host), without
cross-process communication.
"""

import dataclasses
import datetime
import functools
import hashlib
import io
import itertools
import json
import math
import os
import time
from typing import Any, Callable, Optional, Sequence

from absl import flags
from absl import logging
from etils import epath
import jax
import numpy as np

from diffusion_distillation import images as images_lib
from diffusion_distillation import sample as sample_lib
from diffusion_distillation.cli import common
from diffusion_distillation.errors import UserError
from diffusion_distillation import sampling

METRICS = ('digits', 'inception')
RESULTS_JSON = 'results.json'
RESULTS_MD = 'results.md'
PLOT_PNG = 'quality_vs_steps.png'
CACHE_ENV = 'DD_CACHE_DIR'
# Inception Score splits (openai/improved-gan; fewer when there are fewer
# samples than splits).
IS_SPLITS = 10
_INCEPTION_BATCH = 200  # images per jitted Inception call (all local devices)
# Plot the main metric on a log axis when its largest value exceeds the
# smallest by this factor.
_LOG_Y_SPREAD = 20.0


class EvalError(UserError):
  """An evaluation request that cannot be served (bad flag or setting)."""


# --- Settings -----------------------------------------------------------------


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


def default_cache_dir() -> str:
  """`$DD_CACHE_DIR`, else `$XDG_CACHE_HOME` (or ~/.cache)/diffusion_distillation."""
  if os.environ.get(CACHE_ENV):
    return os.environ[CACHE_ENV]
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(
      os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'diffusion_distillation')


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


def _parse_samplers(value) -> tuple[str, ...]:
  items = value.split(',') if isinstance(value, str) else list(value)
  samplers = []
  for item in (str(s).strip() for s in items):
    if item not in sampling.SAMPLERS:
      raise EvalError(f'samplers: unknown sampler {item!r}; known: '
                      f'{",".join(sampling.SAMPLERS)}')
    if item not in samplers:
      samplers.append(item)
  if not samplers:
    raise EvalError('samplers: need at least one sampler')
  return tuple(samplers)


def _check_int(value, name: str, minimum: int, why: str = '') -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise EvalError(f'{name} must be an integer, got {value!r}')
  if value < minimum:
    raise EvalError(f'{name} must be >= {minimum}{why}, got {value}')
  return int(value)


def check_arguments(*, num_samples=None, samplers=None, teacher_steps=None,
                    metric=None, batch_size=None):
  """Validates the explicitly given arguments (cheap: before any loading)."""
  if num_samples is not None:
    _check_int(num_samples, 'num_samples', 2,
               ' (the Frechet distance needs a covariance)')
  if batch_size is not None:
    _check_int(batch_size, 'batch_size', 1)
  if samplers is not None:
    _parse_samplers(samplers)
  if teacher_steps is not None:
    parse_int_list(teacher_steps, 'teacher_steps')
  if metric is not None and metric not in METRICS:
    raise EvalError(f'metric must be one of {",".join(METRICS)}, got '
                    f'{metric!r}')


def resolve_settings(config, *, num_samples=None, samplers=None,
                     teacher_steps=None, metric=None, inception_path=None,
                     seed=0, batch_size=None, cache_dir=None) -> Settings:
  """Arguments override `config.eval`; absent fields get defaults."""
  check_arguments(num_samples=num_samples, samplers=samplers,
                  teacher_steps=teacher_steps, metric=metric,
                  batch_size=batch_size)
  ev = config.get('eval') or {}
  dataset = config.dataset.name
  if metric is None:
    metric = ev.get('metric') or ('digits' if dataset == 'digits'
                                  else 'inception')
  if teacher_steps is None:
    distill = config.get('distillation')
    max_steps = ev.get('teacher_max_steps') or (
        distill.start_num_steps if distill else
        config.model.eval_sampling_num_steps)
    teacher_steps = powers_of_two(_check_int(
        max_steps, 'config.eval.teacher_max_steps', 1))
  settings = Settings(
      metric=metric,
      num_samples=(num_samples if num_samples is not None
                   else ev.get('num_samples', 500)),
      batch_size=(batch_size if batch_size is not None
                  else ev.get('batch_size', 256)),
      samplers=_parse_samplers(samplers if samplers is not None
                               else ev.get('samplers', ('ddim', 'ancestral'))),
      teacher_steps=parse_int_list(teacher_steps, 'teacher_steps'),
      seed=_check_int(seed, 'seed', -2**31),
      inception_path=(inception_path if inception_path is not None
                      else ev.get('inception_path', '')) or '',
      cache_dir=cache_dir or default_cache_dir())
  check_arguments(num_samples=settings.num_samples, metric=settings.metric,
                  batch_size=settings.batch_size)
  if settings.metric == 'digits' and dataset != 'digits':
    raise EvalError(f"metric 'digits' only applies to the digits data set, "
                    f"not {dataset!r}; use --metric=inception")
  return settings


# --- Metrics ------------------------------------------------------------------


@dataclasses.dataclass
class Metric:
  """Scores uint8 samples `[N, H, W, C]`; names its values."""
  name: str  # 'digits' or 'inception'
  main: str  # the headline value (lower is better)
  score: str  # the Inception-Score-like value (higher is better)
  compute: Callable[[np.ndarray], dict[str, float]]
  info: dict[str, Any]  # goes into results.json (reference statistics etc.)

  @property
  def value_names(self) -> tuple[str, ...]:
    return (self.main, self.score)


def digits_metric(cache_dir: str) -> Metric:
  """`digits_fd` / `digits_is` from the cached digits classifier."""
  from diffusion_distillation.metrics import digits_classifier as dc  # pylint: disable=g-import-not-at-top
  classifier = dc.load_or_train_digits_classifier(
      os.path.join(cache_dir, 'digits_classifier.npz'))
  reference = dc.load_or_compute_digits_reference_stats(
      os.path.join(cache_dir, 'digits_reference_stats.npz'), classifier)

  def compute(samples):
    return dc.digits_metrics(samples, classifier, reference)

  return Metric('digits', 'digits_fd', 'digits_is', compute, dict(
      classifier_heldout_accuracy=round(classifier.heldout_accuracy, 4),
      classifier_fingerprint=classifier.fingerprint,
      reference='all 1797 scikit-learn digits',
      reference_num_examples=reference[2]))


@functools.lru_cache(maxsize=None)
def _inception_apply(module):
  """One jitted network per module, data-parallel over this host's devices."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  mesh = Mesh(np.asarray(jax.local_devices()), ('data',))
  rep, split = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  apply = jax.jit(lambda p, x: module.apply({'params': p}, x),
                  in_shardings=(rep, split), out_shardings=rep)
  return apply, rep, split


def local_inception(module, params, batch_size: int):
  """Images (uint8 or float in [0, 255]) -> dict of numpy outputs.

  Every call of the network sees exactly `batch_size` images (rounded up to a
  multiple of the local device count; the last chunk is zero-padded), so
  samples and real data of one resolution share one compiled program.
  """
  apply, rep, split = _inception_apply(module)
  devices = len(jax.local_devices())
  size = -(-batch_size // devices) * devices
  params = jax.device_put(params, rep)

  def features(images) -> dict[str, np.ndarray]:
    images = np.asarray(images)
    outs = []
    for start in range(0, len(images), size):
      batch = images[start:start + size]
      n = len(batch)
      if n < size:
        batch = np.concatenate(
            [batch, np.zeros((size - n,) + batch.shape[1:], batch.dtype)])
      out = apply(params, jax.device_put(batch, split))
      outs.append({k: np.asarray(v)[:n] for k, v in out.items()})
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

  return features


def _fingerprint(params) -> str:
  """Hash of a parameter tree (names, shapes, values)."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  digest = hashlib.sha256()
  flat = traverse_util.flatten_dict(jax.device_get(params), sep='/')
  for name in sorted(flat):
    value = np.ascontiguousarray(flat[name], np.float32)
    digest.update(f'{name}:{value.shape}'.encode())
    digest.update(value.tobytes())
  return digest.hexdigest()[:16]


def _local_weights(path: str, cache_dir: str) -> str:
  """A local copy of a (possibly gs://) weights file."""
  p = epath.Path(path)
  if '://' not in path:
    return path
  if not p.exists():
    return path  # load_inception raises the usual message
  tag = hashlib.sha256(path.encode()).hexdigest()[:8]
  local = os.path.join(cache_dir, 'inception', f'{tag}_{p.name}')
  if not os.path.exists(local):
    os.makedirs(os.path.dirname(local), exist_ok=True)
    tmp = f'{local}.tmp-{os.getpid()}'
    with open(tmp, 'wb') as f:
      f.write(p.read_bytes())
    os.replace(tmp, local)
  return local


def load_inception_or_fail(path: str, cache_dir: str, divisor: int = 1):
  """`metrics.inception.load_inception`, with a one-line EvalError on failure."""
  from diffusion_distillation.metrics import inception  # pylint: disable=g-import-not-at-top
  if not path:
    prefix = ("metric 'inception' needs the Inception weights, but "
              '--inception_path (config.eval.inception_path) is empty. ')
  else:
    prefix = ''
  try:
    return inception.load_inception(_local_weights(path, cache_dir),
                                    divisor=divisor)
  except FileNotFoundError as e:
    raise EvalError(prefix + str(e)) from None
  except (inception.InceptionWeightsError, ImportError) as e:
    raise EvalError(str(e)) from None


def inception_reference_stats(config, features, fingerprint: str,
                              cache_dir: str, split: str = 'train',
                              limit: Optional[int] = None,
                              batch_size: int = 500):
  """`(mu, sigma, n, path)` of pool3 features of the real `split`, cached.

  The cache file is keyed by data set name, split, example count (`all` or the
  limit) and the Inception weights' hash. Real images are rounded to uint8,
  as the samples are.
  """
  from diffusion_distillation import datasets  # pylint: disable=g-import-not-at-top
  from diffusion_distillation.metrics import frechet  # pylint: disable=g-import-not-at-top
  name = config.dataset.name
  count = 'all' if not limit else str(limit)
  path = os.path.join(cache_dir, 'fid_stats',
                      f'{name}_{split}_{count}_{fingerprint}.npz')
  if os.path.exists(path):
    try:
      mu, sigma, n = frechet.load_stats(path)
      logging.info('reference statistics: %s (%d examples)', path, n)
      return mu, sigma, n, path
    except (OSError, ValueError, KeyError, EOFError):
      logging.warning('unreadable reference statistics %s; recomputing', path)
  logging.info('computing Inception statistics of %s/%s (%s examples) -> %s',
               name, split, count, path)
  t0 = time.time()
  try:
    dataset = datasets.get_dataset(
        name, data_dir=config.dataset.get('data_dir') or None,
        **dict(config.dataset.get('args') or {}))
    batches = dataset.eval_batches(batch_size=batch_size, split=split)
    first = next(batches, None)
  except Exception as e:  # pylint: disable=broad-except
    # Usually the data set is not prepared (or not reachable) here.
    message = str(e).strip().splitlines()[0] if str(e).strip() else ''
    raise EvalError(f'cannot read {name}/{split} for the FID reference '
                    f'statistics: {type(e).__name__}: {message}') from e
  acc = frechet.StatsAccumulator()
  if first is not None:
    batches = itertools.chain([first], batches)
  for i, batch in enumerate(batches):
    real = images_lib.to_uint8(batch['image'])
    if limit:
      real = real[:limit - acc.num_examples]
    if len(real):
      acc.update(features(real)['pool3'])
    if i % 20 == 19:
      logging.info('  %d examples (%.0fs)', acc.num_examples, time.time() - t0)
    if limit and acc.num_examples >= limit:
      break
  if acc.num_examples < 2:
    raise EvalError(f'{name}/{split} has {acc.num_examples} examples; the '
                    'reference statistics need at least 2')
  mu, sigma = acc.stats()
  frechet.save_stats(path, mu, sigma, acc.num_examples)
  logging.info('reference statistics: %d examples in %.0fs', acc.num_examples,
               time.time() - t0)
  return mu, sigma, acc.num_examples, path


def inception_metric(config, settings: Settings, divisor: int = 1) -> Metric:
  """FID against the train split's statistics, and the Inception Score."""
  from diffusion_distillation.metrics import frechet  # pylint: disable=g-import-not-at-top
  net = load_inception_or_fail(settings.inception_path, settings.cache_dir,
                               divisor)
  features = local_inception(net.module, net.params,
                             min(_INCEPTION_BATCH, settings.num_samples))
  fingerprint = _fingerprint(net.params)
  limit = (config.get('eval') or {}).get('reference_num_examples') or None
  mu_ref, sigma_ref, n_ref, path = inception_reference_stats(
      config, features, fingerprint, settings.cache_dir, limit=limit)

  def compute(samples):
    out = features(samples)
    mu, sigma = frechet.stats_from_features(out['pool3'])
    fid = frechet.frechet_distance(mu, sigma, mu_ref, sigma_ref)
    score, std = frechet.inception_score(
        out['logits_unbiased'], splits=min(IS_SPLITS, len(samples)),
        from_logits=True)
    return {'fid': fid, 'is': score, 'is_std': std}

  info = dict(reference=f'{config.dataset.name} train split',
              reference_num_examples=n_ref, reference_limit=limit,
              inception_weights=settings.inception_path,
              inception_fingerprint=fingerprint, reference_stats=path,
              is_splits=min(IS_SPLITS, settings.num_samples))
  if divisor != 1:
    info['inception_divisor'] = divisor  # test-only reduced network
  return Metric('inception', 'fid', 'is', compute, info)


def make_metric(config, settings: Settings, inception_divisor: int = 1):
  if settings.metric == 'digits':
    return digits_metric(settings.cache_dir)
  return inception_metric(config, settings, inception_divisor)


# --- Rows ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RowSpec:
  model: str  # 'distilled' or 'teacher'
  sampler: str
  steps: int


def plan_rows(student_steps: Sequence[int],
              settings: Settings) -> list[RowSpec]:
  """Students (DDIM, most steps first), then the teacher per sampler."""
  rows = [RowSpec('distilled', 'ddim', n) for n in sorted(student_steps,
                                                          reverse=True)]
  for sampler in settings.samplers:
    rows += [RowSpec('teacher', sampler, n) for n in settings.teacher_steps]
  return rows


def _finite_or_none(value):
  value = float(value)
  return value if math.isfinite(value) else None


def column_name(model: str, sampler: str) -> str:
  if model == 'distilled':
    return 'distilled' if sampler == 'ddim' else f'distilled {sampler}'
  return f'teacher {"DDIM" if sampler == "ddim" else sampler}'


def _columns(rows) -> list[tuple[str, str]]:
  seen = []
  for row in rows:
    key = (row['model'], row['sampler'])
    if key not in seen:
      seen.append(key)
  return seen


def _fmt(value) -> str:
  if value is None or not math.isfinite(value):
    return '-'
  return f'{value:.2f}' if abs(value) >= 10 else f'{value:.3f}'


def _table(rows, value: str) -> list[str]:
  columns = _columns(rows)
  cells = {(r['model'], r['sampler'], r['steps']): r.get(value) for r in rows}
  steps = sorted({r['steps'] for r in rows})
  lines = ['| steps | ' + ' | '.join(column_name(*c) for c in columns) + ' |',
           '|---:|' + '---:|' * len(columns)]
  for n in steps:
    lines.append(f'| {n} | ' + ' | '.join(
        _fmt(cells[(*c, n)]) if (*c, n) in cells else ''
        for c in columns) + ' |')
  return lines


def format_markdown(results: dict) -> str:
  """Two tables (main metric, IS): one line per step count, one column per
  (model, sampler)."""
  main, score = results['metric_names'][:2]
  header = (f"{results['dataset']} | {results['num_samples']} samples per "
            f"cell | seed {results['seed']} | distilled students sample with "
            'DDIM at their own step count')
  if not results.get('complete', True):
    header += ' | INCOMPLETE (evaluation still running or interrupted)'
  lines = [f'## Sample quality: {results["workdir"]}', '', header, '',
           f'### {main} (lower is better)', '']
  lines += _table(results['rows'], main)
  lines += ['', f'### {score} (higher is better)', '']
  lines += _table(results['rows'], score)
  return '\n'.join(lines) + '\n'


def plot_png(results: dict) -> bytes:
  """Main metric vs. sampler steps (log2 x), one line per (model, sampler)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from matplotlib.ticker import NullLocator  # pylint: disable=g-import-not-at-top
  main = results['metric_names'][0]
  fig = Figure(figsize=(6.4, 4.4), dpi=120)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  values, steps = [], set()
  for model, sampler in _columns(results['rows']):
    pts = sorted((r['steps'], r[main]) for r in results['rows']
                 if (r['model'], r['sampler']) == (model, sampler)
                 and r.get(main) is not None)
    if not pts:
      continue
    xs, ys = zip(*pts)
    values += ys
    steps.update(xs)
    ax.plot(xs, ys, marker='o', linewidth=2.2 if model == 'distilled' else 1.5,
            label=column_name(model, sampler))
  ax.set_xscale('log', base=2)
  if steps:
    ticks = sorted(steps)
    ax.set_xticks(ticks, labels=[str(t) for t in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
  if values and min(values) > 0 and max(values) / min(values) > _LOG_Y_SPREAD:
    ax.set_yscale('log')
  ax.set_xlabel('sampler steps')
  ax.set_ylabel(f'{main} (lower is better)')
  ax.set_title(f"{results['dataset']}: {main} vs. sampler steps "
               f"({results['num_samples']} samples)")
  ax.grid(True, which='both', alpha=0.3)
  if values:
    ax.legend()
  buf = io.BytesIO()
  fig.savefig(buf, format='png', bbox_inches='tight')
  return buf.getvalue()


def write_results(workdir, results: dict,
                  plot: bool = True) -> dict[str, epath.Path]:
  """results.json, results.md and (with `plot`) the plot under WORKDIR/eval."""
  out = epath.Path(workdir) / 'eval'
  out.mkdir(parents=True, exist_ok=True)
  paths = dict(json=out / RESULTS_JSON, markdown=out / RESULTS_MD,
               plot=out / PLOT_PNG)
  paths['json'].write_text(json.dumps(results, indent=2) + '\n')
  paths['markdown'].write_text(format_markdown(results))
  if plot:
    paths['plot'].write_bytes(plot_png(results))
  return paths


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec='seconds')


# --- The evaluation -----------------------------------------------------------


def run_evaluation(workdir, *, num_samples: Optional[int] = None,
                   samplers=None, teacher_steps=None,
                   metric: Optional[str] = None,
                   inception_path: Optional[str] = None, seed: int = 0,
                   batch_size: Optional[int] = None,
                   cache_dir: Optional[str] = None,
                   print_table: bool = True,
                   inception_divisor: int = 1) -> dict:
  """Scores every finished student and the teacher; writes WORKDIR/eval.

  Arguments left as None come from the workdir's `config.eval` (see the
  module docstring). `samplers` and `teacher_steps` take sequences or
  comma-separated strings (`teacher_steps='none'`: no teacher rows).
  `inception_divisor` is for tests only (a reduced-width Inception network).

  Returns the content of results.json: metadata and `rows`, each
  `{model, sampler, steps, <metric values>, seconds, sample_seconds,
  metric_seconds}`.

  Raises:
    EvalError, workdir_models.WorkdirError, sample.SampleError: for requests
      that cannot be served (all ValueErrors with a one-line message).
  """
  check_arguments(num_samples=num_samples, samplers=samplers,
                  teacher_steps=teacher_steps, metric=metric,
                  batch_size=batch_size)
  if not workdir:
    raise EvalError('--workdir is required')
  if not (epath.Path(workdir) / 'config.json').exists():
    # Checked here too, so a mistyped path fails before the slow imports.
    raise EvalError(f'{workdir} is not a training workdir (no config.json)')
  from diffusion_distillation import workdir_models  # pylint: disable=g-import-not-at-top
  t_start = time.time()
  loaded = workdir_models.open_workdir(workdir)
  config = loaded.config
  settings = resolve_settings(
      config, num_samples=num_samples, samplers=samplers,
      teacher_steps=teacher_steps, metric=metric,
      inception_path=inception_path, seed=seed, batch_size=batch_size,
      cache_dir=cache_dir)
  specs = plan_rows(loaded.student_steps(), settings)
  if not specs:
    raise EvalError('nothing to evaluate: no finished student and no teacher '
                    'step counts')
  t0 = time.time()
  scorer = make_metric(config, settings, inception_divisor)
  logging.info('metric %s ready in %.1fs', settings.metric, time.time() - t0)
  teacher = (loaded.teacher_params()
             if any(s.model == 'teacher' for s in specs) else None)

  results = dict(
      workdir=str(workdir), dataset=config.dataset.name,
      metric=settings.metric, metric_names=list(scorer.value_names),
      num_samples=settings.num_samples, seed=settings.seed,
      batch_size=settings.batch_size, samplers=list(settings.samplers),
      teacher_steps=list(settings.teacher_steps),
      student_steps=loaded.student_steps(), date=_now(),
      devices=f'{jax.device_count()} x {jax.devices()[0].device_kind}',
      metric_info=scorer.info, complete=False, seconds=None, rows=[])
  write = jax.process_index() == 0
  logging.info('%d rows, %d samples each; the first row of each sampler '
               'includes compiling it', len(specs), settings.num_samples)
  for i, spec in enumerate(specs):
    params = (loaded.student_params(spec.steps) if spec.model == 'distilled'
              else teacher)
    t0 = time.time()
    samples, _ = sample_lib.generate(
        loaded.model, params, mesh=loaded.mesh,
        num_samples=settings.num_samples, num_steps=spec.steps,
        seed=settings.seed, sampler=spec.sampler,
        batch_size=settings.batch_size)
    t1 = time.time()
    try:
      values = scorer.compute(samples)
    except ValueError as e:  # e.g. a non-finite matrix square root
      logging.warning('%s %s %d steps: metric failed (%s)', spec.model,
                      spec.sampler, spec.steps, e)
      values = {name: float('nan') for name in scorer.value_names}
    t2 = time.time()
    row = dict(model=spec.model, sampler=spec.sampler, steps=spec.steps)
    row.update({k: _finite_or_none(v) for k, v in values.items()})
    row.update(seconds=round(t2 - t0, 2), sample_seconds=round(t1 - t0, 2),
               metric_seconds=round(t2 - t1, 2))
    results['rows'].append(row)
    logging.info(
        '[%d/%d] %-9s %-9s %4d steps: %s (sampling %.1fs, metric %.1fs)',
        i + 1, len(specs), spec.model, spec.sampler, spec.steps,
        ' '.join(f'{k}={_fmt(row[k])}' for k in scorer.value_names),
        t1 - t0, t2 - t1)
    last = i + 1 == len(specs)
    if last:
      results.update(complete=True, seconds=round(time.time() - t_start, 1))
    if write:  # after every row: an interrupted run keeps what it measured
      write_results(workdir, results, plot=last)
  if write:
    logging.info('wrote %s', epath.Path(workdir) / 'eval')
    if print_table:
      print(format_markdown(results), flush=True)
  return results


# --- Command line ---------------------------------------------------------------

FLAGS = flags.FLAGS


def define_flags():
  common.DEFINE_path('workdir', None, 'Workdir of a training run.')
  flags.DEFINE_integer('num_samples', None,
                       'Samples per row (default: config.eval.num_samples).')
  flags.DEFINE_list('samplers', None,
                    'Teacher samplers, e.g. ddim,ancestral (default: '
                    'config.eval.samplers). Students always use DDIM.')
  flags.DEFINE_list('teacher_steps', None,
                    'Teacher step counts, e.g. 1,2,4 (default: powers of two '
                    'up to config.eval.teacher_max_steps); none: no teacher.')
  flags.DEFINE_string('metric', None, 'digits or inception (default: '
                      'config.eval.metric).')
  common.DEFINE_path('inception_path', None,
                      'classify_image_graph_def.pb or its .npz (default: '
                      'config.eval.inception_path).')
  flags.DEFINE_integer('seed', 0, 'Random seed (the same for every row).')
  flags.DEFINE_integer('batch_size', None,
                       'Samples per compiled call (default: '
                       'config.eval.batch_size).')
  common.DEFINE_path('cache_dir', None,
                      f'Metric caches (default: ${CACHE_ENV} or '
                      '~/.cache/diffusion_distillation).')


def main(argv):
  del argv  # checked by common.run
  if not FLAGS.workdir:
    raise EvalError('--workdir is required')
  teacher_steps = FLAGS.teacher_steps
  if teacher_steps is not None:
    teacher_steps = ','.join(teacher_steps) or 'none'
  check_arguments(num_samples=FLAGS.num_samples, samplers=FLAGS.samplers,
                  teacher_steps=teacher_steps, metric=FLAGS.metric,
                  batch_size=FLAGS.batch_size)
  run_evaluation(
      FLAGS.workdir, num_samples=FLAGS.num_samples, samplers=FLAGS.samplers,
      teacher_steps=teacher_steps, metric=FLAGS.metric,
      inception_path=FLAGS.inception_path, seed=FLAGS.seed,
      batch_size=FLAGS.batch_size, cache_dir=FLAGS.cache_dir)


if __name__ == '__main__':
  define_flags()
  common.run(main)
