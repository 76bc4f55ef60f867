r"""Write one model of a workdir as a single file.

    python -m diffusion_distillation.export --workdir=workdirs/digits \
        --num_steps=4 --output=digits_4.dd

writes the 4-step distilled student (`--model=teacher`: the teacher, with
`--num_steps` as its default step count) with everything needed to sample it:
parameters, config, step count, image shape and classes. Read it with
`diffusion_distillation.load(FILE)` or
`python -m diffusion_distillation.sample --checkpoint=FILE`, no config needed.
`--format=official` writes the layout of the authors' released checkpoints
instead (readable by their code; ours then needs `--config`), and
`--format=diffusers` a folder `--output=DIR` (`DIR/unet`, `DIR/scheduler`)
that diffusers' `UNet2DModel` and `DDIMScheduler` load (docs/diffusers.md).
"""

from absl import flags

from diffusion_distillation.api import exporting
from diffusion_distillation.api import loading
from diffusion_distillation.cli import common
from diffusion_distillation.cli import ending

FLAGS = flags.FLAGS


def define_flags():
  common.DEFINE_path('workdir', None, 'Workdir of a training run.',
                     required=True)
  flags.DEFINE_integer('num_steps', None, "The student's step count; with "
                       "--model=teacher the teacher's default step count "
                       '(default: the config\'s eval_sampling_num_steps).',
                       lower_bound=1)
  common.DEFINE_path('output', None, 'The file to write (the folder, with '
                     '--format=diffusers).', required=True)
  flags.DEFINE_enum('model', 'distilled', ['distilled', 'teacher'],
                    'The distilled student for --num_steps, or the teacher.')
  flags.DEFINE_enum('format', 'native', list(exporting.FORMATS),
                    'native: self-describing; official: the layout of the '
                    'released checkpoints (reading it back needs --config); '
                    "diffusers: a folder of diffusers' UNet2DModel and "
                    'DDIMScheduler.')
  flags.DEFINE_bool('overwrite', False, 'Replace --output if it exists.')


def main(argv):
  del argv  # checked by ending.run
  if FLAGS.format == 'diffusers':
    exporting.check_output_folder(FLAGS.output, FLAGS.overwrite)
  else:
    exporting.check_output_name(FLAGS.output, FLAGS.overwrite)
  model = loading.from_workdir(FLAGS.workdir, num_steps=FLAGS.num_steps,
                               model=FLAGS.model)
  path = model.export(FLAGS.output, FLAGS.format, FLAGS.overwrite)
  read = {'native': 'dd.load(FILE) or sample --checkpoint=FILE',
          'official': 'sample --checkpoint=FILE --config=CONFIG',
          'diffusers': "diffusers' from_pretrained (see its README.md)"}[
              FLAGS.format]
  print(f'wrote {path}: {model!r}, {FLAGS.format} format; read it with '
        f'{read}')


def run():
  define_flags()
  ending.run(main)
