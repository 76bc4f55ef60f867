r"""Draw samples from a trained workdir: a distilled student or the teacher.

    python -m diffusion_distillation.sample --workdir=workdirs/digits \
        --num_steps=4 --num_samples=64 --seed=0 --output=samples.npz

writes `images` (uint8 [M, H, W, C]; plus `labels` when class-conditional) to
the .npz and a PNG grid beside it. `--model=distilled` (default) uses the
student distilled for exactly `--num_steps`; `--model=teacher` runs the base
model's sampler (`--sampler=ddim` or `ancestral`) with that many steps.
"""

from absl import flags
from absl import logging
from etils import epath
import jax
import numpy as np

from diffusion_distillation.cli import common
from diffusion_distillation.diffusion import sampling
from diffusion_distillation.models import generation
from diffusion_distillation.models import images
from diffusion_distillation.models.generation import SampleError

FLAGS = flags.FLAGS


def write_samples(output, samples, labels, conditional: bool):
  """Writes the .npz (images, and labels when conditional) and a PNG grid."""
  output = epath.Path(output)
  output.parent.mkdir(parents=True, exist_ok=True)
  arrays = {'images': samples}
  if conditional:
    arrays['labels'] = labels
  with output.open('wb') as f:
    np.savez(f, **arrays)
  grid = output.with_suffix('.png')
  images.save_grid(grid, samples[:256],
                   scale=max(1, 64 // samples.shape[1]))
  return output, grid


def sample_workdir(workdir, *, num_steps: int, num_samples: int, seed: int,
                   output, model: str = 'distilled', sampler: str = 'ddim',
                   batch_size: int = 256):
  """Samples a workdir's student (or teacher) into `output` (.npz + .png).

  Returns the two paths on process 0, None on the others. Raises a UserError
  (SampleError, WorkdirError) for a request the workdir cannot serve.
  """
  from diffusion_distillation.pipeline import workdir_lock  # pylint: disable=g-import-not-at-top
  from diffusion_distillation.pipeline import workdirs  # pylint: disable=g-import-not-at-top
  if not str(output).endswith('.npz'):
    raise SampleError(f'--output must name a .npz file, got {output!r}')
  if epath.Path(output).is_dir():
    raise SampleError(f'--output={output} is a directory')
  if model == 'distilled' and sampler != 'ddim':
    raise SampleError('distilled students sample with --sampler=ddim only')
  loaded = workdirs.open_workdir(workdir)
  params = (loaded.student_params(num_steps) if model == 'distilled'
            else loaded.teacher_params())
  if jax.process_index() == 0:  # before sampling, not after
    parent = epath.Path(output).parent
    workdir_lock.check_writable(parent, f'{parent} (the directory of --output)')
  logging.info('sampling %d images: %s, %s, %d steps', num_samples, model,
               sampler, num_steps)
  samples, labels = generation.generate(
      loaded.model, params, mesh=loaded.mesh, num_samples=num_samples,
      num_steps=num_steps, seed=seed, sampler=sampler, batch_size=batch_size)
  if jax.process_index() == 0:
    return write_samples(output, samples, labels,
                         loaded.model.num_classes > 1)
  return None


def define_flags():
  common.DEFINE_path('workdir', None, 'Workdir of a training run.',
                     required=True)
  flags.DEFINE_integer('num_steps', None, 'Number of sampler steps.',
                       lower_bound=1, required=True)
  flags.DEFINE_integer('num_samples', 64, 'Number of samples.', lower_bound=1)
  flags.DEFINE_integer('seed', 0, 'Random seed.')
  common.DEFINE_path('output', None, 'Output .npz file.', required=True)
  flags.DEFINE_enum('model', 'distilled', ['distilled', 'teacher'],
                    'The distilled student for --num_steps, or the teacher.')
  flags.DEFINE_enum('sampler', 'ddim', list(sampling.SAMPLERS),
                    'Sampler (the teacher only; students use DDIM).')
  flags.DEFINE_integer('batch_size', 256, 'Samples per compiled call.',
                       lower_bound=1)


def main(argv):
  del argv  # checked by common.run
  paths = sample_workdir(
      FLAGS.workdir, num_steps=FLAGS.num_steps, num_samples=FLAGS.num_samples,
      seed=FLAGS.seed, output=FLAGS.output, model=FLAGS.model,
      sampler=FLAGS.sampler, batch_size=FLAGS.batch_size)
  if paths:
    print(f'wrote {paths[0]} and {paths[1]}')


def run():
  define_flags()
  common.run(main)
