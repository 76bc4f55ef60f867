r"""Train a teacher and progressively distill it, as the config describes.

    python -m diffusion_distillation.main --config=configs/digits.py \
        --workdir=workdirs/digits [--config.train.batch_size=64 ...]

Rerunning the same command resumes from the workdir.
"""

from absl import flags
from absl import logging

from diffusion_distillation.cli import common
from diffusion_distillation.cli import ending
from diffusion_distillation.parallel import distributed
from diffusion_distillation.pipeline import workdir_lock

FLAGS = flags.FLAGS


def define_flags():
  common.DEFINE_config()
  common.DEFINE_path('workdir', None,
                     'Directory (local or gs://) for this run.', required=True)
  flags.DEFINE_string('coordinator_address', None,
                      'host:port of process 0, for multi-process runs that no '
                      'cluster scheduler (SLURM, Open MPI, TPU pod) started.')
  flags.DEFINE_integer('num_processes', None,
                       'Number of processes (with coordinator).')
  flags.DEFINE_integer('process_id', None, 'This process (with coordinator).')
  flags.DEFINE_float('process_timeout', distributed.PROCESS_TIMEOUT_S,
                     'Multi-process runs: seconds after which a process that '
                     'has not joined, or has stopped responding, ends the '
                     'run on every process.', lower_bound=1.)
  flags.DEFINE_integer('profile_steps', 0,
                       'Trace this many updates (after the first, compiling '
                       'call) with jax.profiler into WORKDIR/profile, for '
                       "TensorBoard's profile plugin.", lower_bound=0)


def main(argv):
  del argv  # checked by ending.run
  config = common.complete_config(FLAGS.config)
  if config.train.gpu_deterministic_ops:  # read when JAX starts, just below
    distributed.add_xla_flag('--xla_gpu_deterministic_ops=true')
  # First: from here on, an error on one process ends every process.
  cluster = distributed.initialize(
      FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
      process_timeout=FLAGS.process_timeout)
  distributed.check_accelerator()
  if distributed.is_primary():
    logging.info('%s', distributed.describe_devices(cluster))
  workdir_lock.check_directory(FLAGS.workdir, f'--workdir={FLAGS.workdir}')
  # Imported here, after the flags are checked: it loads orbax and the
  # model, which takes seconds that a mistyped flag should not cost.
  from diffusion_distillation.pipeline import loop  # pylint: disable=g-import-not-at-top
  summary = loop.run(config, FLAGS.workdir, profile_steps=FLAGS.profile_steps)
  print(loop.format_summary(summary, FLAGS.workdir), flush=True)
  if config.eval.run_after_training:
    from diffusion_distillation.evaluation import evaluate  # pylint: disable=g-import-not-at-top

    # Every process samples its share; process 0 writes the table.
    evaluate.run_evaluation(FLAGS.workdir, only_if_changed=True)


def run():
  define_flags()
  ending.run(main, flags_parser=common.parse_flags_with_config,
             memory_hint=ending.TRAINING_MEMORY_HINT)
