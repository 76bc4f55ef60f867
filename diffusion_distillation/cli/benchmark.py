r"""Throughput of training, distillation and sampling for one config.

    python -m diffusion_distillation.benchmark --config=configs/digits.py \
        [--config.train.batch_size=128 ...] [--repeats=5] [--warmup=1] \
        [--sample_steps=N] [--data=synthetic|dataset] [--profile_steps=N]
    python -m diffusion_distillation.benchmark --memory \
        --config=configs/cifar10_distill.py [--config.model.remat=true]
    python -m diffusion_distillation.benchmark --input_pipeline=50 \
        --config=configs/image_folder.py --config.dataset.path=DIR

Prints one JSON object per line: one per timed program, then a summary with
`train_img_per_s`, `distill_img_per_s` and `sample_img_per_s` (see
evaluation/benchmark.py for every field). With `--memory` nothing runs: the
train and distill updates are compiled at two batch sizes and one line each
gives `fixed_bytes`, `bytes_per_image` and `max_batch_per_device` per device
size (evaluation/memory.py); no data or teacher file is needed. With
`--input_pipeline=N` only the data set's training batches are timed:
`img_per_s` of reading and preprocessing.
"""

import os

from absl import flags
from etils import epath
import jax
from ml_collections import config_flags

from diffusion_distillation.cli import common
from diffusion_distillation.cli import ending
from diffusion_distillation.evaluation import benchmark
from diffusion_distillation.pipeline import tracing

FLAGS = flags.FLAGS


def define_flags():
  common.DEFINE_config()
  flags.DEFINE_integer('repeats', 5, 'Timed calls per program (median).',
                       lower_bound=1)
  flags.DEFINE_integer('warmup', 1, 'Untimed calls per program first.',
                       lower_bound=0)
  flags.DEFINE_integer('sample_steps', None,
                       'Teacher sampler steps (default: '
                       'config.model.eval_sampling_num_steps).')
  flags.DEFINE_enum('data', 'synthetic', list(benchmark.DATA_SOURCES),
                    'Random images, or the first batches of the dataset.')
  flags.DEFINE_integer('profile_steps', 0,
                       'After timing, trace this many calls of the train and '
                       'distill updates with jax.profiler into '
                       "--profile_dir, for TensorBoard's profile plugin.",
                       lower_bound=0)
  common.DEFINE_path('profile_dir', 'profile',
                     'Where --profile_steps writes its trace.')
  flags.DEFINE_integer('input_pipeline', 0, 'Time this many training '
                       'batches of the data set alone (images/s of reading '
                       'and preprocessing), nothing else.', lower_bound=0)
  flags.DEFINE_boolean('memory', False,
                       'Compile, do not run: the device memory of the train '
                       'and distill updates, and the batch that fits.')


def _print_json(record):
  if jax.process_index() == 0:
    print(benchmark.to_json(record), flush=True)


def main(argv):
  del argv  # checked by ending.run
  path = config_flags.get_config_filename(FLAGS['config'])
  name = os.path.splitext(os.path.basename(path.split(':')[0]))[0]
  if FLAGS.input_pipeline:
    benchmark.input_pipeline(common.complete_config(FLAGS.config),
                             batches=FLAGS.input_pipeline, emit=_print_json)
    return
  if FLAGS.memory:
    benchmark.memory(common.complete_config(FLAGS.config), config_name=name,
                     emit=_print_json)
    return
  benchmark.benchmark(
      common.complete_config(FLAGS.config), repeats=FLAGS.repeats,
      warmup=FLAGS.warmup, sample_steps=FLAGS.sample_steps, data=FLAGS.data,
      config_name=name, emit=_print_json,
      trace=(tracing.StepTrace(epath.Path(FLAGS.profile_dir),
                               FLAGS.profile_steps)
             if FLAGS.profile_steps else None))


def run():
  define_flags()
  ending.run(main, flags_parser=common.parse_flags_with_config,
             memory_hint=ending.TRAINING_MEMORY_HINT)
