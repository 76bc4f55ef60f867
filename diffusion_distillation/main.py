r"""Train a teacher and progressively distill it, as the config describes.

    python -m diffusion_distillation.main --config=configs/digits.py \
        --workdir=/tmp/digits [--config.train.batch_size=64 ...]

Rerunning the same command resumes from the workdir.
"""

import re
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from diffusion_distillation import distributed
from diffusion_distillation.cli import common

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file (configs/*.py).', lock_config=True)
_WORKDIR = common.DEFINE_path('workdir', None,
                              'Directory (local or gs://) for this run.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None,
    'host:port of process 0, for multi-process runs off TPU.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None,
                                      'Number of processes (with coordinator).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None,
                                   'This process (with coordinator).')
flags.mark_flags_as_required(['config', 'workdir'])


def _unknown_override(argv, error) -> str:
  """Names the `--config.<path>` override whose field the config lacks."""
  missing = str(error.args[0] if error.args else error).strip('\'"')
  overrides = [arg.split('=', 1)[0] for arg in argv[1:]
               if re.match(r'--?(no)?config\.', arg)]
  named = [o for o in overrides if missing in re.split(r'[.\[\]]', o)]
  if named:
    return f'{named[0]}: the config has no field {missing!r}'
  return f'{" ".join(overrides)}: {missing}'


def parse_flags(argv):
  """absl's flag parsing, plus one-line errors where ml_collections has none.

  An override of a field the config does not have raises a bare
  AttributeError / KeyError (not an absl flags error), and a config file that
  cannot be loaded only fails when the config is first read; both would
  otherwise end in a traceback.
  """
  try:
    remaining = app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError, IndexError) as e:
    common.fail(_unknown_override(argv, e))
  try:
    _CONFIG.value.get('seed')
  except OSError as e:
    path = config_flags.get_config_filename(flags.FLAGS['config'])
    reason = str(e.__cause__ or e).strip().splitlines()[-1].strip()
    common.fail(f'--config={path}: cannot load the config file: {reason}')
  return remaining


def main(argv):
  del argv  # checked by common.run
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                         _PROCESS_ID.value)
  # Imported here, after the flags are checked: it loads TensorFlow (via
  # clu), which takes seconds that a mistyped flag should not cost.
  from diffusion_distillation import train  # pylint: disable=g-import-not-at-top
  config = common.resolve_config_paths(_CONFIG.value)
  summary = train.run(config, _WORKDIR.value)
  print(train.format_summary(summary, _WORKDIR.value), flush=True)
  if config.get('eval') and config.eval.run_after_training:
    from diffusion_distillation import evaluate  # pylint: disable=g-import-not-at-top
    # Every process samples its share; process 0 writes the table.
    evaluate.run_evaluation(_WORKDIR.value)


if __name__ == '__main__':
  common.run(main, flags_parser=parse_flags)
