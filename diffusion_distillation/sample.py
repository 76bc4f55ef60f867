r"""Draw samples from a trained workdir: a distilled student or the teacher.

    python -m diffusion_distillation.sample --workdir=/tmp/digits \
        --num_steps=4 --num_samples=64 --seed=0 --output=/tmp/samples.npz

writes `images` (uint8 [M, H, W, C]; plus `labels` when class-conditional) to
the .npz and a PNG grid beside it. `--model=distilled` (default) uses the
student distilled for exactly `--num_steps`; `--model=teacher` runs the base
model's sampler (`--sampler=ddim` or `ancestral`) with that many steps.
"""

import functools

from absl import flags
from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_distillation import images
from diffusion_distillation import parallel
from diffusion_distillation import sampling
from diffusion_distillation.cli import common
from diffusion_distillation.errors import UserError


class SampleError(UserError):
  """A sampling request that cannot be served (bad flag or workdir)."""


@functools.lru_cache(maxsize=None)
def _sampler_fn(model, sampler: str, mesh):
  """One compiled sampler per model and sampler; the step count is data."""
  rep = parallel.replicated(mesh)

  def run(params, rng, labels, num_steps):
    return model.generate(params, rng, labels, num_steps=num_steps,
                          sampler=sampler,
                          batch_sharding=parallel.batch_sharding(mesh))

  return jax.jit(run, in_shardings=(rep, rep, parallel.batch_sharding(mesh),
                                    rep), out_shardings=rep)


def default_labels(num_samples: int, num_classes: int) -> np.ndarray:
  """Balanced class labels (all zeros when unconditional)."""
  return (np.arange(num_samples) % num_classes).astype(np.int32)


def generate(model, params, *, mesh, num_samples: int, num_steps: int,
             seed: int, sampler: str = 'ddim', batch_size: int = 256,
             labels=None):
  """Samples `num_samples` images (uint8) in batches sharded over all devices.

  Returns (images [M, H, W, C] uint8, labels [M] int32). Batch k uses
  fold_in(PRNGKey(seed), k), so results depend on the seed and batch size only.
  """
  if sampler not in sampling.SAMPLERS:
    raise SampleError(f'unknown sampler {sampler!r}; known: {sampling.SAMPLERS}')
  labels = (default_labels(num_samples, model.num_classes) if labels is None
            else np.asarray(labels, np.int32))
  devices = mesh.devices.size
  batch = -(-min(batch_size, num_samples) // devices) * devices
  fn = _sampler_fn(model, sampler, mesh)
  key = jax.random.PRNGKey(seed)
  out = []
  for k, start in enumerate(range(0, num_samples, batch)):
    y = labels[start:start + batch]
    y = np.pad(y, (0, batch - len(y)))
    y = jax.make_array_from_callback(
        y.shape, parallel.batch_sharding(mesh), lambda idx, y=y: y[idx])
    x = fn(params, jax.random.fold_in(key, k), y, jnp.int32(num_steps))
    out.append(np.asarray(parallel.to_host(x)))
  samples = np.concatenate(out)[:num_samples]
  return images.to_uint8(samples), labels


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


FLAGS = flags.FLAGS


def define_flags():
  common.DEFINE_path('workdir', None, 'Workdir of a training run.')
  flags.DEFINE_integer('num_steps', None, 'Number of sampler steps.')
  flags.DEFINE_integer('num_samples', 64, 'Number of samples.')
  flags.DEFINE_integer('seed', 0, 'Random seed.')
  common.DEFINE_path('output', None, 'Output .npz file.')
  flags.DEFINE_enum('model', 'distilled', ['distilled', 'teacher'],
                    'The distilled student for --num_steps, or the teacher.')
  flags.DEFINE_enum('sampler', 'ddim', list(sampling.SAMPLERS),
                    'Sampler (the teacher only; students use DDIM).')
  flags.DEFINE_integer('batch_size', 256, 'Samples per compiled call.')


def run(workdir, *, num_steps, num_samples, seed, output, model='distilled',
        sampler='ddim', batch_size=256):
  """The CLI's work; raises SampleError for requests it cannot serve."""
  from diffusion_distillation import workdir_models  # pylint: disable=g-import-not-at-top
  if num_steps is None or num_steps < 1:
    raise SampleError(f'--num_steps must be >= 1, got {num_steps}')
  if num_samples < 1:
    raise SampleError(f'--num_samples must be >= 1, got {num_samples}')
  if batch_size < 1:
    raise SampleError(f'--batch_size must be >= 1, got {batch_size}')
  if not output or not str(output).endswith('.npz'):
    raise SampleError(f'--output must name a .npz file, got {output!r}')
  if model == 'distilled' and sampler != 'ddim':
    raise SampleError('distilled students sample with --sampler=ddim only')
  loaded = workdir_models.open_workdir(workdir)
  params = (loaded.student_params(num_steps) if model == 'distilled'
            else loaded.teacher_params())
  samples, labels = generate(
      loaded.model, params, mesh=loaded.mesh, num_samples=num_samples,
      num_steps=num_steps, seed=seed, sampler=sampler, batch_size=batch_size)
  if jax.process_index() == 0:
    return write_samples(output, samples, labels,
                         loaded.model.num_classes > 1)
  return None


def main(argv):
  del argv  # checked by common.run
  paths = run(FLAGS.workdir, num_steps=FLAGS.num_steps,
              num_samples=FLAGS.num_samples, seed=FLAGS.seed,
              output=FLAGS.output, model=FLAGS.model, sampler=FLAGS.sampler,
              batch_size=FLAGS.batch_size)
  if paths:
    print(f'wrote {paths[0]} and {paths[1]}')


if __name__ == '__main__':
  define_flags()
  common.run(main)
