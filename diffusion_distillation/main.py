r"""Train a teacher and progressively distill it, as the config describes.

    python -m diffusion_distillation.main --config=configs/digits.py \
        --workdir=/tmp/digits [--config.train.batch_size=64 ...]

Rerunning the same command resumes from the workdir.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from diffusion_distillation import config_validation
from diffusion_distillation import distributed
from diffusion_distillation import train

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file (configs/*.py).', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Directory (local or gs://) for this run.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None,
    'host:port of process 0, for multi-process runs off TPU.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None,
                                      'Number of processes (with coordinator).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None,
                                   'This process (with coordinator).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments {argv[1:]}')
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                         _PROCESS_ID.value)
  config = _CONFIG.value
  try:
    summary = train.run(config, _WORKDIR.value)
  except config_validation.ConfigError as e:
    sys.exit(f'error: {e}')
  logging.info('\n%s', train.format_summary(summary, _WORKDIR.value))
  print(train.format_summary(summary, _WORKDIR.value), flush=True)


if __name__ == '__main__':
  app.run(main)
