r"""Draw samples from a workdir, an exported model or a released checkpoint.

    python -m diffusion_distillation.sample --workdir=workdirs/digits \
        --num_steps=4 --num_samples=64 --seed=0 --output=samples.npz
    python -m diffusion_distillation.sample --checkpoint=imagenet_8 \
        --config=imagenet64 --labels=867,867,2,2 --output=trucks.npz

writes `images` (uint8 [M, H, W, C]; plus `labels` when class-conditional) to
the .npz and a PNG grid beside it. Give exactly one of `--workdir` (a training
run) and `--checkpoint` (a file written by `export`, or an official released
checkpoint with the `--config` it pairs with). `--model=distilled` (default)
uses the student distilled for exactly `--num_steps`; `--model=teacher` runs
the base model's sampler with that many steps: `--sampler=ddim`,
`ancestral`, or a training-free ODE solver (`dpmpp_2m`, `dpmpp_3m`, `unipc`,
`ipndm`, `heun`), each optionally on another step grid (`unipc:karras`,
`dpmpp_3m:logsnr_uniform`). The same code as `diffusion_distillation.load`
and `Model.sample`.

A guided run (configs/digits_guided.py) samples at a guidance strength:
`--guidance=2` (the student: one evaluation per step, within its trained
range; the teacher: two), and a student also with `--sampler=stochastic`.
"""

from absl import flags
from etils import epath
import jax

from diffusion_distillation import files
from diffusion_distillation import paths
from diffusion_distillation.api import configs
from diffusion_distillation.api import loading
from diffusion_distillation.cli import common
from diffusion_distillation.cli import ending
from diffusion_distillation.config import choices
from diffusion_distillation.models import images
from diffusion_distillation.models.generation import SampleError

FLAGS = flags.FLAGS


def write_samples(output, samples, labels, conditional: bool):
  """Writes the .npz (images, and labels when conditional) and a PNG grid."""
  output = epath.Path(output)
  arrays = {'images': samples}
  if conditional:
    arrays['labels'] = labels
  files.savez(output, arrays)
  grid = output.with_suffix('.png')
  images.save_grid(grid, samples[:256],
                   scale=max(1, 64 // samples.shape[1]))
  return output, grid


def check_output(output, overwrite: bool = False):
  """Refuses an --output that is not a .npz file, or that exists (without
  `overwrite`, as `export`), before any work."""
  if not str(output).endswith('.npz'):
    raise SampleError(f'--output must name a .npz file, got {output!r}')
  path = epath.Path(output)
  if path.is_dir():
    raise SampleError(f'--output={output} is a directory')
  if path.exists() and not overwrite:
    raise SampleError(f'--output={output} exists; pass --overwrite to '
                      'replace it (and its .png grid)')


def sample_model(model, *, num_samples, seed: int, output, labels=None,
                 sampler: str = 'ddim', batch_size: int = 256,
                 guidance=None):
  """Samples a loaded `api.Model` into `output` (.npz + .png).

  Returns the two paths on process 0, None on the others.
  """
  from diffusion_distillation.pipeline import workdir_lock  # pylint: disable=g-import-not-at-top
  num_samples = num_samples or (len(labels) if labels else 64)
  used, _ = model.prepare(num_samples, labels, sampler=sampler,
                          guidance=guidance, seed=seed)
  if jax.process_index() == 0:  # before sampling, not after
    parent = epath.Path(output).parent
    workdir_lock.check_writable(parent, f'{parent} (the directory of --output)')
  samples = model.sample(num_samples, seed=seed, labels=labels,
                         sampler=sampler, batch_size=batch_size,
                         guidance=guidance)
  if jax.process_index() == 0:
    return write_samples(output, samples, used, model.num_classes > 1)
  return None


def sample_workdir(workdir, *, num_steps: int, num_samples: int, seed: int,
                   output, model: str = 'distilled', sampler: str = 'ddim',
                   batch_size: int = 256, labels=None, guidance=None,
                   overwrite: bool = False):
  """Samples a workdir's student (or teacher) into `output` (.npz + .png).

  Returns the two paths on process 0, None on the others. Raises a
  ModelError for a request the workdir cannot serve, or an existing
  `output` without `overwrite`.
  """
  check_output(output, overwrite)
  loaded = loading.from_workdir(workdir, num_steps=num_steps, model=model)
  return sample_model(loaded, num_samples=num_samples, seed=seed,
                      output=output, labels=labels, sampler=sampler,
                      batch_size=batch_size, guidance=guidance)


def _labels(values):
  """--labels=867,867,2 as ints (None when not given)."""
  if not values:
    return None
  try:
    return [int(v) for v in values]
  except ValueError:
    raise SampleError(f'--labels={",".join(values)}: give integer class ids, '
                      'separated by commas') from None


def _config_flag(value):
  """--config: a name as given; a local file path made absolute."""
  if value and (value.endswith('.py') or '/' in value):
    return paths.absolute_path(value)
  return value


def define_flags():
  common.DEFINE_path('workdir', None, 'Workdir of a training run.')
  common.DEFINE_path('checkpoint', None,
                     'A file written by export, or an official released '
                     'checkpoint (file or directory; local or gs://) with '
                     '--config.')
  flags.DEFINE_string('config', None,
                      'With --checkpoint of a released checkpoint: the config '
                      'it pairs with, a file or one of: '
                      f'{", ".join(configs.config_names())}.')
  flags.DEFINE_integer('num_steps', None, 'Number of sampler steps: the '
                       "student's (required for a workdir's students); "
                       "default: the teacher's model.eval_sampling_num_steps, "
                       'or the step count a --checkpoint file records.',
                       lower_bound=1)
  flags.DEFINE_integer('num_samples', None, 'Number of samples (default: the '
                       'number of --labels, or 64).', lower_bound=1)
  flags.DEFINE_list('labels', None, 'Class ids, one per sample, for a '
                    'class-conditional model, e.g. 867,867,2,2.')
  flags.DEFINE_integer('seed', 0, 'Random seed.')
  common.DEFINE_path('output', None, 'Output .npz file.', required=True)
  flags.DEFINE_enum('model', None, ['distilled', 'teacher'],
                    'The distilled student for --num_steps (default), or the '
                    'teacher.')
  common.DEFINE_choice('sampler', 'ddim', choices.SAMPLER,
                       'Sampler: ddim, ancestral, dpmpp_2m, dpmpp_3m, unipc, '
                       'ipndm or heun for the teacher, optionally :<grid> '
                       '(time_uniform, logsnr_uniform, karras); ddim or '
                       'stochastic (Meng et al., 2023) for a student.')
  flags.DEFINE_float('guidance', None,
                     'Classifier-free guidance strength w of a guided model: '
                     'the guided teacher (two evaluations per step) or the '
                     'w-conditioned student of guided distillation (one; its '
                     'trained range only).')
  flags.DEFINE_integer('batch_size', 256, 'Samples per compiled call.',
                       lower_bound=1)
  flags.DEFINE_bool('overwrite', False,
                    'Replace --output (and its grid) if it exists.')


def _load():
  """The model the flags name, through the same code as `dd.load`."""
  if bool(FLAGS.workdir) == bool(FLAGS.checkpoint):
    raise SampleError('give exactly one of --workdir (a training run) and '
                      '--checkpoint (an exported or released model)')
  if FLAGS.workdir:  # the teacher's default --num_steps: as dd.load's
    if FLAGS.config:
      raise SampleError('--config is for --checkpoint only: a workdir has its '
                        'own config')
    return loading.from_workdir(FLAGS.workdir, num_steps=FLAGS.num_steps,
                                model=FLAGS.model)
  return loading.from_checkpoint(
      FLAGS.checkpoint, num_steps=FLAGS.num_steps, model=FLAGS.model,
      config=_config_flag(FLAGS.config))


def main(argv):
  del argv  # checked by ending.run
  check_output(FLAGS.output, FLAGS.overwrite)
  labels = _labels(FLAGS.labels)
  paths = sample_model(_load(), num_samples=FLAGS.num_samples,
                       seed=FLAGS.seed, output=FLAGS.output, labels=labels,
                       sampler=FLAGS.sampler, batch_size=FLAGS.batch_size,
                       guidance=FLAGS.guidance)
  if paths:
    print(f'wrote {paths[0]} and {paths[1]}')


def run():
  define_flags()
  ending.run(main,
             memory_hint=ending.BATCH_MEMORY_HINT)
