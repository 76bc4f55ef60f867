"""An evaluation's output files under WORKDIR/eval.

    results.json        rows + metadata (`complete` turns true at the end)
    results.md          Markdown tables (main metric and IS)
    quality_vs_steps.png
"""

import io
import json
import math

from etils import epath

RESULTS_JSON = 'results.json'
RESULTS_MD = 'results.md'
PLOT_PNG = 'quality_vs_steps.png'
# Plot the main metric on a log axis when its largest value exceeds the
# smallest by this factor.
_LOG_Y_SPREAD = 20.0


def column_name(model: str, sampler: str) -> str:
  """The table column (and plot label) of a (model, sampler) pair."""
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


def format_value(value) -> str:
  """A table cell: '-' for a missing or non-finite value, else 3-4 digits."""
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
        format_value(cells[(*c, n)]) if (*c, n) in cells else ''
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


def _plot_lines(ax, results: dict, main: str):
  """One line per (model, sampler); returns (plotted values, step counts)."""
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
  return values, steps


def plot_png(results: dict) -> bytes:
  """Main metric vs. sampler steps (log2 x), one line per (model, sampler)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from matplotlib.ticker import NullLocator  # pylint: disable=g-import-not-at-top
  main = results['metric_names'][0]
  fig = Figure(figsize=(6.4, 4.4), dpi=120)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  values, steps = _plot_lines(ax, results, main)
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
