"""An evaluation's output files under WORKDIR/eval.

    results.json        rows + metadata of the last complete evaluation
    results.md          Markdown tables (main metric and IS)
    quality_vs_steps.png
    results.partial.json, results.partial.md
                        the rows of the evaluation under way (`complete`
                        false), replaced by the three above at its end

So an interrupted evaluation keeps the previous complete results, and what
reads results.json (`quality_claims`, the notebook) never sees a partial one.
Each file is written under a temporary name and renamed.
"""

import io
import json
import math

from etils import epath

from diffusion_distillation import files

RESULTS_JSON = 'results.json'
RESULTS_MD = 'results.md'
PLOT_PNG = 'quality_vs_steps.png'
PARTIAL_JSON = 'results.partial.json'
PARTIAL_MD = 'results.partial.md'
# Plot the main metric on a log axis when its largest value exceeds the
# smallest by this factor.
_LOG_Y_SPREAD = 20.0


def column_name(model: str, sampler: str, guidance=None) -> str:
  """The table column (and plot label) of a (model, sampler) pair, and of
  its guidance strength w in a guided run."""
  if model == 'distilled':
    name = 'distilled' if sampler == 'ddim' else f'distilled {sampler}'
  else:
    name = f'teacher {"DDIM" if sampler == "ddim" else sampler}'
  return name if guidance is None else f'{name} w={guidance:g}'


def _key(row) -> tuple:
  return (row['model'], row['sampler'], row.get('guidance'))


def nfe(row) -> int:
  """A row's network evaluations (results from before they were recorded:
  its steps, what DDIM costs)."""
  return row.get('nfe', row['steps'])


def _columns(rows) -> list[tuple]:
  """The (model, sampler, guidance) of `rows`, in order of appearance."""
  return list(dict.fromkeys(_key(r) for r in rows))


def _pairs(rows) -> list[tuple[str, str]]:
  """The (model, sampler) pairs of `rows`, in order of appearance."""
  return list(dict.fromkeys((r['model'], r['sampler']) for r in rows))


def format_value(value) -> str:
  """A table cell: '-' for a missing or non-finite value, else 3-4 digits."""
  if value is None or not math.isfinite(value):
    return '-'
  return f'{value:.2f}' if abs(value) >= 10 else f'{value:.3f}'


def _table(rows, value: str, best=None) -> list[str]:
  """One line per cost in network evaluations (per guidance w and cost in a
  guided run), one column per (model, sampler). With `best` (min or max), a
  last column names the best a user can have for that cost: the best cell at
  this many NFE or fewer."""
  pairs = _pairs(rows)
  cells = {(*_key(r), nfe(r)): r.get(value) for r in rows}
  lines = sorted({(r.get('guidance'), nfe(r)) for r in rows},
                 key=lambda k: (k[0] or 0., k[1]))
  guided = any(w is not None for w, _ in lines)
  out = ['| ' + ('w | ' if guided else '') + 'NFE | ' +
         ' | '.join(column_name(*p) for p in pairs) +
         (' | best within this NFE' if best else '') + ' |',
         '|' + '---:|' * (len(pairs) + 1 + guided) + ('---|' if best else '')]
  for w, n in lines:
    row = ' | '.join(format_value(cells[(*p, w, n)]) if (*p, w, n) in cells
                     else '' for p in pairs)
    if best:
      within = {(m, s, g, k): v for (m, s, g, k), v in cells.items()
                if g == w and k <= n and v is not None and math.isfinite(v)}
      winner = best(within, key=within.get) if within else None
      row += ' | ' + (f'{column_name(*winner[:2])} ({winner[3]})'
                      if winner else '')
    out.append('| ' + (f'{w:g} | ' if guided else '') + f'{n} | ' + row + ' |')
  return out


def format_markdown(results: dict) -> str:
  """Tables of the main metric, IS and (when measured) class accuracy: one
  line per cost in network evaluations, NFE (and guidance w), one column per
  (model, sampler), and which is best at that cost."""
  main, score = results['metric_names'][:2]
  header = (f"{results['dataset']} | {results['num_samples']} samples per "
            f"cell | seed {results['seed']} | distilled students sample with "
            'DDIM at their own step count | NFE: network evaluations (one '
            "per step; Heun's 2N - 1; a guided teacher's twice that)")
  if not results.get('complete', True):
    header += ' | INCOMPLETE (evaluation still running or interrupted)'
  if results.get('missing_students'):
    header += (' | NOT EVALUATED: the student(s) for '
               f"{', '.join(map(str, results['missing_students']))} steps "
               '(their checkpoints are missing)')
  lines = [f'## Sample quality: {results["workdir"]}', '', header, '',
           f'### {main} (lower is better)', '']
  lines += _table(results['rows'], main, best=min)
  lines += ['', f'### {score} (higher is better)', '']
  lines += _table(results['rows'], score, best=max)
  if any('class_accuracy' in r for r in results['rows']):
    lines += ['', '### class accuracy (fraction of samples classified as '
              'their requested label; higher is better)', '']
    lines += _table(results['rows'], 'class_accuracy')
  return '\n'.join(lines) + '\n'


def _plot_lines(ax, results: dict, main: str):
  """One line per (model, sampler) (and guidance w: one colour per w, one
  line style per (model, sampler)); returns (plotted values, their NFEs)."""
  values, steps = [], set()
  columns = _columns(results['rows'])
  pairs = _pairs(results['rows'])
  strengths = list(dict.fromkeys(c[2] for c in columns))
  for model, sampler, guidance in columns:
    pts = sorted((nfe(r), r[main]) for r in results['rows']
                 if _key(r) == (model, sampler, guidance)
                 and r.get(main) is not None)
    if not pts:
      continue
    xs, ys = zip(*pts)
    values += ys
    steps.update(xs)
    style = {} if guidance is None else dict(
        color=f'C{strengths.index(guidance) % 10}',
        linestyle=('-', '--', ':', '-.')[pairs.index((model, sampler)) % 4])
    ax.plot(xs, ys, marker='o', linewidth=2.2 if model == 'distilled' else 1.5,
            label=column_name(model, sampler, guidance), **style)
  return values, steps


def plot_png(results: dict) -> bytes:
  """Main metric vs. network evaluations (log2 x), one line per (model,
  sampler)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from matplotlib.ticker import NullLocator  # pylint: disable=g-import-not-at-top
  main = results['metric_names'][0]
  fig = Figure(figsize=(6.4, 4.4), dpi=120)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  values, steps = _plot_lines(ax, results, main)
  ax.set_xscale('log', base=2)
  if steps:  # powers of two (Heun's 2N - 1 would crowd them)
    ticks = sorted(n for n in steps if n & (n - 1) == 0) or sorted(steps)
    ax.set_xticks(ticks, labels=[str(t) for t in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
  if values and min(values) > 0 and max(values) / min(values) > _LOG_Y_SPREAD:
    ax.set_yscale('log')
  ax.set_xlabel('network evaluations (NFE)')
  ax.set_ylabel(f'{main} (lower is better)')
  ax.set_title(f"{results['dataset']}: {main} vs. NFE "
               f"({results['num_samples']} samples)")
  ax.grid(True, which='both', alpha=0.3)
  if values:
    ax.legend()
  buf = io.BytesIO()
  fig.savefig(buf, format='png', bbox_inches='tight')
  return buf.getvalue()


def write_results(workdir, results: dict) -> dict[str, epath.Path]:
  """The files of `results` under WORKDIR/eval: the partial ones while it is
  not complete, else the final ones (and the partial ones removed)."""
  out = epath.Path(workdir) / 'eval'
  out.mkdir(parents=True, exist_ok=True)
  text = lambda: json.dumps(results, indent=2) + '\n'
  if not results.get('complete'):
    paths = dict(json=out / PARTIAL_JSON, markdown=out / PARTIAL_MD)
    files.write_bytes(paths['json'], text().encode())
    files.write_bytes(paths['markdown'], format_markdown(results).encode())
    return paths
  paths = dict(json=out / RESULTS_JSON, markdown=out / RESULTS_MD,
               plot=out / PLOT_PNG)
  data = {paths['json']: text().encode(),
          paths['markdown']: format_markdown(results).encode(),
          paths['plot']: plot_png(results)}  # all made before any is written
  for path, content in data.items():
    files.write_bytes(path, content)
  for name in (PARTIAL_JSON, PARTIAL_MD):
    (out / name).unlink(missing_ok=True)
  return paths
