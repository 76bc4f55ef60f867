"""A loaded model: parameters on every local device, and `sample`.

What `diffusion_distillation.load` returns, whatever the source (a workdir, an
exported file, a released checkpoint): sampling needs no mesh, context or
config from the caller.
"""

from absl import logging
import numpy as np

from diffusion_distillation.api import exporting
from diffusion_distillation.config import choices
from diffusion_distillation.errors import ModelError
from diffusion_distillation.models import generation
from diffusion_distillation.parallel import sharding

KINDS = ('distilled', 'teacher')
# A student's samplers: DDIM, or the stochastic sampler of Meng et al. (2023).


def steps_argument(num_steps) -> int:
  """`num_steps` as given by a caller, checked."""
  return _positive_int(num_steps, 'num_steps')


def _positive_int(value, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ModelError(f'{name} must be an integer >= 1, got {value!r}')
  if value < 1:
    raise ModelError(f'{name} must be >= 1, got {value}')
  return int(value)


class Model:
  """A diffusion model ready to sample, with what it is and where it is from.

  Attributes:
    kind: 'distilled' (a student: samples with exactly `num_steps` DDIM steps)
      or 'teacher' (any step count, DDIM or ancestral).
    num_steps: the step count `sample` uses by default.
    num_classes: 1 when unconditional; the labels `sample` accepts are
      0..num_classes-1 otherwise.
    image_shape: (H, W, C) of one image.
    config: the ConfigDict the model was built from.
    source: the path it was loaded from.
    diffusion_model, params, mesh: the building blocks, for advanced use.
  """

  def __init__(self, diffusion_model, params, *, config, kind: str,
               num_steps: int, mesh, source: str):
    self.diffusion_model = diffusion_model
    self.mesh = mesh
    # Put on the devices once, not at every `sample` call.
    self.params = sharding.replicate(params, mesh)
    self.config = config
    self.kind = kind
    self.num_steps = int(num_steps)
    self.source = str(source)

  @property
  def num_classes(self) -> int:
    return self.diffusion_model.num_classes

  @property
  def image_shape(self) -> tuple:
    return tuple(self.diffusion_model.data_shape)

  def __repr__(self):
    what = (f'{self.num_steps}-step distilled student' if self.kind ==
            'distilled' else f'teacher ({self.num_steps} steps by default)')
    classes = (f'{self.num_classes} classes' if self.num_classes > 1 else
               'unconditional')
    shape = 'x'.join(map(str, self.image_shape))
    return f'<Model: {what}, {shape}, {classes}, from {self.source}>'

  def labels_for(self, n: int, labels=None) -> np.ndarray:
    """The int32 labels `sample(n, labels=labels)` uses (checked)."""
    n = _positive_int(n, 'the number of samples')
    generation.check_fits(n, self.image_shape)
    if labels is None:
      return generation.default_labels(n, self.num_classes)
    if self.num_classes == 1:
      raise ModelError('labels were given, but this model is unconditional '
                       '(it has no classes); leave the labels out')
    y = np.asarray(labels)
    if y.ndim != 1 or not (y.size == 0 or np.issubdtype(y.dtype, np.integer)):
      raise ModelError(f'labels must be a list of integer class ids, got '
                       f'{str(labels)[:80]}')
    if len(y) != n:
      raise ModelError(f'{len(y)} labels for {n} samples: give one label per '
                       'sample (or leave the labels out)')
    bad = y[(y < 0) | (y >= self.num_classes)]
    if bad.size:
      raise ModelError(f'label {bad[0]} is out of range: this model has '
                       f'{self.num_classes} classes, '
                       f'0..{self.num_classes - 1}')
    return y.astype(np.int32)

  def steps_for(self, num_steps=None) -> int:
    """The step count `sample(num_steps=...)` uses (checked)."""
    if num_steps is None:
      return self.num_steps
    num_steps = steps_argument(num_steps)
    if (self.kind == 'distilled' and num_steps != self.num_steps and
        not self._consistency_student()):
      raise ModelError(
          f'this is the {self.num_steps}-step distilled student: it samples '
          f'with {self.num_steps} steps only, not {num_steps}; load the '
          "teacher (model='teacher') for other step counts")
    return num_steps

  def _consistency_student(self) -> bool:
    """A consistency-distilled student: it samples in any step count."""
    return self.kind == 'distilled' and self.diffusion_model.sampled(
        True).consistency

  def guidance_for(self, guidance=None):
    """The guidance strength w `sample(guidance=...)` uses (checked).

    None samples an unguided model; a w-conditioned student (guided
    distillation) defaults to `guidance.w_const` (the authors' 0.3).
    """
    student = self.kind == 'distilled'
    takes_w = self.diffusion_model.sampled(student).w_conditioned
    if guidance is None:
      if not takes_w:
        return None
      guidance = self.diffusion_model.w_const
    self.diffusion_model.check_guidance(float(guidance), student=student)
    return float(guidance)

  def prepare(self, n: int, labels=None, num_steps=None, *,
              sampler: str = 'ddim', guidance=None, seed: int = 0):
    """(labels, num_steps) that `sample` would use; raises what it would.

    For callers that must refuse a request before any work (the `sample`
    command checks it before creating its output directory).
    """
    y = self.labels_for(n, labels)
    num_steps = self.steps_for(num_steps)
    choices.require(choices.SAMPLER, 'sampler', sampler,
                    generation.SampleError)
    name, grid = choices.split_sampler(sampler)
    if self.kind == 'distilled' and (name not in choices.STUDENT_SAMPLERS or
                                     grid != choices.GRIDS[0]):
      raise generation.SampleError(
          "distilled students sample with sampler='ddim' or "
          f"sampler='stochastic', not {sampler!r}: a student was trained "
          'for the DDIM steps of its own grid (the solvers and grids are '
          "for a teacher's ODE)")
    if self._consistency_student() and name != 'ddim':
      raise generation.SampleError(
          "a consistency student samples with sampler='ddim' (for it: "
          f'multistep consistency sampling), not {sampler!r}')
    if name == 'stochastic' and num_steps == 1:
      raise generation.SampleError(
          "sampler='stochastic' needs 2 or more steps (each step jumps two "
          "and renoises one); with 1 step it would be DDIM: use "
          "sampler='ddim'")
    self.guidance_for(guidance)
    generation.seed_key(seed)
    return y, num_steps

  def sample(self, n: int, seed: int = 0, labels=None, num_steps=None, *,
             sampler: str = 'ddim', batch_size: int = 256,
             guidance=None) -> np.ndarray:
    """Draws `n` images: uint8 numpy [n, H, W, C]; same seed, same images.

    Args:
      n: number of images.
      seed: any integer in [-2**63, 2**63 - 1]. Image i depends on (seed, i)
        and its label only: the first k of n images are `sample(k)`'s, at
        any `batch_size` and device count.
      labels: one class id per image for a class-conditional model (default:
        0, 1, 2, ... cycling over the classes); None for an unconditional one.
      num_steps: a teacher's step count for this call (default: the model's
        own); a distilled student samples with its own step count only,
        a consistency student with any.
      sampler: 'ddim' (deterministic); for a teacher also 'ancestral' and
        the ODE solvers 'dpmpp_2m', 'dpmpp_3m', 'unipc', 'ipndm', 'heun'
        (Heun: 2 * num_steps - 1 network evaluations), each optionally on
        another step grid, e.g. 'unipc:logsnr_uniform' or 'heun:karras';
        for a student 'stochastic' (Meng et al., 2023); a consistency
        student's 'ddim' is multistep consistency sampling.
      batch_size: images per compiled call, split over all devices.
      guidance: the classifier-free guidance strength w of a guided model:
        a guided teacher takes any w (two evaluations per step), the
        w-conditioned student of guided distillation its trained range (one
        evaluation; default 0).

    Raises:
      ModelError: a request this model cannot serve; the message says why.
    """
    y, num_steps = self.prepare(n, labels, num_steps, sampler=sampler,
                                guidance=guidance, seed=seed)
    batch_size = _positive_int(batch_size, 'batch_size')
    logging.info('sampling %d images: %s, %s, %d steps', len(y), self.kind,
                 sampler, num_steps)
    images, _ = generation.generate(
        self.diffusion_model.sampled(self.kind == 'distilled'), self.params,
        mesh=self.mesh,
        num_samples=len(y), num_steps=num_steps, seed=seed, sampler=sampler,
        batch_size=batch_size, labels=y, guidance=self.guidance_for(guidance))
    return images

  def export(self, output, format: str = 'native', overwrite: bool = False):  # pylint: disable=redefined-builtin
    """Writes this model as one file; see `exporting.write`."""
    return exporting.write(self, output, format, overwrite)
