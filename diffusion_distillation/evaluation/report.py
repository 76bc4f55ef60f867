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


# A distilled row's method (`distillation.method`) as its columns name it:
# progressive distillation's students, the paper's, are 'distilled' (also
# rows recorded before methods were).
METHOD_LABELS = {'progressive': 'distilled', 'tract': 'TRACT',
                 'consistency': 'CD'}


def column_name(model: str, sampler: str, guidance=None,
                method: str = 'progressive') -> str:
  """The table column (and plot label) of a (model, sampler) pair, and of
  its guidance strength w in a guided run: a student by its method
  ('distilled stochastic', 'TRACT', 'CD'), the teacher by its sampler."""
  if model == 'distilled':
    name = METHOD_LABELS[method or 'progressive']
    name = name if sampler == 'ddim' else f'{name} {sampler}'
  else:
    name = f'teacher {"DDIM" if sampler == "ddim" else sampler}'
  return name if guidance is None else f'{name} w={guidance:g}'


def _key(row) -> tuple:
  """(model, sampler, guidance, method, workdir): a row's column, and its
  guidance strength. `workdir` only for the rows of a compared workdir."""
  return (row['model'], row['sampler'], row.get('guidance'),
          row.get('method'), row.get('workdir'))


def _labels(keys) -> dict:
  """Each column key's name; a compared workdir's column whose name another
  column has too ends in its workdir's name."""
  names = {k: column_name(*k[:4]) for k in keys}
  taken = list(names.values())
  return {k: (f'{n} ({epath.Path(k[4]).name})'
              if k[4] and taken.count(n) > 1 else n) for k, n in names.items()}


def nfe(row) -> int:
  """A row's network evaluations (results from before they were recorded:
  its steps, what DDIM costs)."""
  return row.get('nfe', row['steps'])


def _columns(rows) -> list[tuple]:
  """The keys (`_key`) of `rows`, in order of appearance."""
  return list(dict.fromkeys(_key(r) for r in rows))


def _unguided(key: tuple) -> tuple:
  return (*key[:2], None, *key[3:])


def _pairs(rows) -> list[tuple]:
  """The keys of `rows` with their guidance left out (one table column per
  model and sampler), in order of appearance."""
  return list(dict.fromkeys(_unguided(_key(r)) for r in rows))


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
  labels = _labels(pairs)
  cells = {(_key(r), nfe(r)): r.get(value) for r in rows}
  lines = sorted({(r.get('guidance'), nfe(r)) for r in rows},
                 key=lambda k: (k[0] or 0., k[1]))
  guided = any(w is not None for w, _ in lines)
  out = ['| ' + ('w | ' if guided else '') + 'NFE | ' +
         ' | '.join(labels[p] for p in pairs) +
         (' | best within this NFE' if best else '') + ' |',
         '|' + '---:|' * (len(pairs) + 1 + guided) + ('---|' if best else '')]
  for w, n in lines:
    at = lambda p: ((*p[:2], w, *p[3:]), n)  # pylint: disable=cell-var-from-loop
    row = ' | '.join(format_value(cells[at(p)]) if at(p) in cells else ''
                     for p in pairs)
    if best:
      within = {(key, k): v for (key, k), v in cells.items()
                if key[2] == w and k <= n and v is not None and
                math.isfinite(v)}
      winner = best(within, key=within.get) if within else None
      row += ' | ' + (f'{labels[_unguided(winner[0])]} ({winner[1]})'
                      if winner else '')
    out.append('| ' + (f'{w:g} | ' if guided else '') + f'{n} | ' + row + ' |')
  return out


def format_markdown(results: dict) -> str:
  """Tables of the main metric, IS and (when measured) class accuracy: one
  line per cost in network evaluations, NFE (and guidance w), one column per
  (model, sampler), and which is best at that cost."""
  main, score = results['metric_names'][:2]
  header = (f"{results['dataset']} | {results['num_samples']} samples per "
            f"cell | seed {results['seed']} | students sample with DDIM at "
            'their own step count (CD: multistep consistency sampling) | '
            "NFE: network evaluations (one per step; Heun's 2N - 1; a guided "
            "teacher's twice that)")
  if not results.get('complete', True):
    header += ' | INCOMPLETE (evaluation still running or interrupted)'
  if results.get('compared'):
    header += (f" | with the students of {', '.join(results['compared'])}"
               + (', from the same teacher' if results['same_teacher'] else
                  ' | NOTE: the workdirs\' teachers differ (their students '
                  'were not distilled from the same model)'))
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
  labels = _labels(pairs)
  for key in columns:
    model, _, guidance, *_ = key
    pts = sorted((nfe(r), r[main]) for r in results['rows']
                 if _key(r) == key and r.get(main) is not None)
    if not pts:
      continue
    xs, ys = zip(*pts)
    values += ys
    steps.update(xs)
    label = labels[_unguided(key)]
    style = {} if guidance is None else dict(
        color=f'C{strengths.index(guidance) % 10}',
        linestyle=('-', '--', ':', '-.')[pairs.index(_unguided(key)) % 4])
    ax.plot(xs, ys, marker='o', linewidth=2.2 if model == 'distilled' else 1.5,
            label=label if guidance is None else f'{label} w={guidance:g}',
            **style)
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


def write_results(workdir, results: dict,
                  name: str = '') -> dict[str, epath.Path]:
  """The files of `results` under WORKDIR/eval: the partial ones while it is
  not complete, else the final ones (and the partial ones removed). With a
  `name`: NAME.json, NAME.md and NAME.png instead (e.g. a comparison)."""
  out = epath.Path(workdir) / 'eval'
  out.mkdir(parents=True, exist_ok=True)
  text = lambda: json.dumps(results, indent=2) + '\n'
  if not results.get('complete') and not name:
    paths = dict(json=out / PARTIAL_JSON, markdown=out / PARTIAL_MD)
    files.write_bytes(paths['json'], text().encode())
    files.write_bytes(paths['markdown'], format_markdown(results).encode())
    return paths
  paths = (dict(json=out / RESULTS_JSON, markdown=out / RESULTS_MD,
                plot=out / PLOT_PNG) if not name else
           dict(json=out / f'{name}.json', markdown=out / f'{name}.md',
                plot=out / f'{name}.png'))
  data = {paths['json']: text().encode(),
          paths['markdown']: format_markdown(results).encode(),
          paths['plot']: plot_png(results)}  # all made before any is written
  for path, content in data.items():
    files.write_bytes(path, content)
  if not name:
    for partial in (PARTIAL_JSON, PARTIAL_MD):
      (out / partial).unlink(missing_ok=True)
  return paths
