"""Inspect a released official checkpoint.

    python -m diffusion_distillation.official_checkpoint --input=PATH --info
"""

from absl import flags

from diffusion_distillation.cli import common
from diffusion_distillation.cli import ending
from diffusion_distillation.pipeline import official_checkpoints

FLAGS = flags.FLAGS


def define_flags():
  common.DEFINE_path('input', None,
                     'Official checkpoint: msgpack file or directory of '
                     'checkpoint_<step> files (local or gs://).',
                     required=True)
  flags.DEFINE_bool('info', False,
                    'Print step, num_sample_steps, parameter count and '
                    'top-level module names.')


def main(argv):
  del argv  # checked by ending.run
  if not FLAGS.info:
    common.fail('nothing to do; pass --info')
  try:
    print(official_checkpoints.describe(FLAGS.input))
  except (OSError, ValueError) as e:
    common.fail(str(e))


def run():
  define_flags()
  ending.run(main)
