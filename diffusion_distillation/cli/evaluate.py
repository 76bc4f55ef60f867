r"""Sample quality against sampler steps: distilled students vs. the teacher.

    python -m diffusion_distillation.evaluate --workdir=/tmp/digits \
        [--num_samples=500] [--samplers=ddim,ancestral] \
        [--teacher_steps=1,2,4,8] [--metric=digits|inception] \
        [--inception_path=/path/classify_image_graph_def.pb] [--seed=0] \
        [--batch_size=500] [--cache_dir=...] [--compare=DIR,DIR]

Every finished distilled student is sampled with DDIM at its own step count;
the teacher with each of `--samplers` at 1, 2, 4, ... steps up to
`config.eval.teacher_max_steps` (or at `--teacher_steps`; `none` skips the
teacher). Flags default to the workdir's `config.eval`; given flags override
it. `--metric=digits` (8x8 digits only) is not comparable with any published
number; `--metric=inception` (FID against the train split, and IS) uses the
2015-12-05 Inception weights: `--inception_path`, else the copy downloaded
once into `<cache_dir>/inception/` (from `$DD_INCEPTION_URL`, default the
official archive).

Process 0 writes the rows so far to WORKDIR/eval/results.partial.json and
results.partial.md after every row, and at the end results.json, results.md
and quality_vs_steps.png (each renamed into place whole): an interrupted
evaluation keeps the previous complete results. Metric caches live in
`--cache_dir`, else `$DD_CACHE_DIR`, else
`$XDG_CACHE_HOME/diffusion_distillation` (default
`~/.cache/diffusion_distillation`); delete a file to recompute it.

`--compare=DIR,...` adds the students of other workdirs (e.g. TRACT and
consistency runs distilled from the same teacher) to one table and plot,
WORKDIR/eval/comparison.{md,json,png} (evaluation/comparison.py).
"""

from absl import flags

from diffusion_distillation import config as config_lib
from diffusion_distillation import paths
from diffusion_distillation.cli import common
from diffusion_distillation.cli import ending
from diffusion_distillation.evaluation import comparison
from diffusion_distillation.evaluation import evaluate
from diffusion_distillation.evaluation import settings

FLAGS = flags.FLAGS


class _ListParser(flags.ListParser):
  """A comma-separated list (as `DEFINE_list` splits it), then `parse`d.

  The errors of `parse` (EvalErrors, so ValueErrors) become absl flag errors.
  """

  def __init__(self, parse):
    super().__init__()
    self._parse = parse

  def parse(self, argument):
    return self._parse(super().parse(argument))


def _teacher_steps(items):
  # An empty list (`--teacher_steps=`) means no teacher, like `none`.
  return settings.parse_int_list(','.join(items) or 'none', 'teacher_steps')


def _define_list(name: str, parse, help_text: str):
  flags.DEFINE(_ListParser(parse), name, None, help_text,
               serializer=flags.CsvListSerializer(','))


def define_flags():
  # Not required=True: run_evaluation says '--workdir is required' itself.
  common.DEFINE_path('workdir', None, 'Workdir of a training run.')
  flags.DEFINE_integer('num_samples', None,
                       'Samples per row (default: config.eval.num_samples).',
                       lower_bound=2)
  _define_list('samplers', settings.parse_samplers,
               'Teacher samplers, e.g. ddim,ancestral (default: '
               'config.eval.samplers). Students always use DDIM.')
  _define_list('teacher_steps', _teacher_steps,
               'Teacher step counts, e.g. 1,2,4 (default: powers of two up '
               'to config.eval.teacher_max_steps); none: no teacher.')
  flags.DEFINE_enum('metric', None, list(config_lib.METRICS),
                    'Quality metric (default: config.eval.metric).')
  common.DEFINE_path('inception_path', None,
                     'classify_image_graph_def.pb or its .npz (default: '
                     'config.eval.inception_path, else downloaded once into '
                     'the cache directory).')
  flags.DEFINE_integer('seed', 0, 'Random seed (the same for every row).')
  flags.DEFINE_integer('batch_size', None,
                       'Samples per compiled call (default: '
                       'config.eval.batch_size).', lower_bound=1)
  flags.DEFINE_list('compare', [],
                    'Other workdirs whose students join this one\'s in one '
                    'table (WORKDIR/eval/comparison.md, .json, .png), e.g. '
                    'the TRACT and consistency runs of the same teacher.')
  common.DEFINE_path('cache_dir', None,
                     f'Metric caches (default: ${paths.CACHE_ENV} or '
                     '~/.cache/diffusion_distillation).')


def main(argv):
  del argv  # checked by ending.run
  options = dict(
      num_samples=FLAGS.num_samples, samplers=FLAGS.samplers,
      teacher_steps=FLAGS.teacher_steps, metric=FLAGS.metric,
      inception_path=FLAGS.inception_path, seed=FLAGS.seed,
      batch_size=FLAGS.batch_size, cache_dir=FLAGS.cache_dir)
  if FLAGS.compare:
    comparison.run_comparison(FLAGS.workdir, FLAGS.compare, **options)
  else:
    evaluate.run_evaluation(FLAGS.workdir, **options)


def run():
  define_flags()
  ending.run(main,
             memory_hint=ending.BATCH_MEMORY_HINT)
