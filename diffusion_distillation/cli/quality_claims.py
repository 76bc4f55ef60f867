r"""Checks the paper's claim, in miniature, on an evaluated digits workdir.

    python -m diffusion_distillation.main --config=configs/digits.py \
        --workdir=workdirs/digits       # trains, distills, evaluates
    python -m diffusion_distillation.quality_claims --workdir=workdirs/digits

Prints one JSON object per claim (evaluation/claims.py) and the whole table;
exits 1 if a claim fails. A benchmark, not a unit test: it needs a fully
trained workdir.
"""

import json
import sys

from absl import flags
from etils import epath

from diffusion_distillation.cli import common
from diffusion_distillation.cli import ending
from diffusion_distillation.errors import UserError
from diffusion_distillation.evaluation import claims
from diffusion_distillation.evaluation import report

FLAGS = flags.FLAGS


def define_flags():
  common.DEFINE_path('workdir', None, 'An evaluated workdir.', required=True)
  flags.DEFINE_integer('steps', 4, 'Student step count to check.',
                       lower_bound=1)


def main(argv):
  del argv  # checked by ending.run
  workdir = epath.Path(FLAGS.workdir)
  out = workdir / 'eval'
  path = out / report.RESULTS_JSON
  if not workdir.is_dir():
    raise UserError(f'--workdir={workdir} does not exist')
  if not path.exists() and not (workdir / 'config.json').exists():
    raise UserError(f'--workdir={workdir} is not a training workdir (no '
                    'config.json)')
  if not path.exists():
    raise UserError(f'{path} does not exist; run '
                    'python -m diffusion_distillation.evaluate first')
  results = claims.check(json.loads(path.read_text()), FLAGS.steps)
  for claim in results:
    print(json.dumps(claim))
  table = out / report.RESULTS_MD
  if table.exists():
    print(table.read_text())
  if not all(c['holds'] for c in results):
    sys.exit(1)


def run():
  define_flags()
  ending.run(main)
