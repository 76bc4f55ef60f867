"""What the config's fields may hold, declared once, below every user of it.

The closed lists of names (samplers, parameterizations, data sets, ...), and
how the structured values read: a variance name (`variance_fraction`) and the
paper's UNet levels for an image size (`shape_for_size`). The maths, the
models and the data sets import their lists from here, and a config field,
a command-line flag and an API argument check a name with the same `Check`
(config/schema.py) and say the same words (`require`).
"""

import dataclasses
import math
from typing import Optional

from diffusion_distillation.config.schema import Check

# Sampling loops (diffusion/sampling.py): deterministic DDIM, the ancestral
# sampler, the stochastic sampler of Meng et al. (2023), and the
# training-free ODE solvers (diffusion/solvers.py) a teacher is compared on.
SOLVERS = ('dpmpp_2m', 'dpmpp_3m', 'unipc', 'ipndm', 'heun')
SAMPLERS = ('ddim', 'ancestral', 'stochastic') + SOLVERS
# The samplers that draw fresh noise inside the loop (they need an rng).
NOISY_SAMPLERS = ('ancestral', 'stochastic')
# What a distilled student samples with: it was trained for its DDIM grid.
STUDENT_SAMPLERS = ('ddim', 'stochastic')
# Step grids (diffusion/grids.py), chosen as `<sampler>:<grid>`; the first
# is the default, progressive distillation's (and a student's only) grid.
GRIDS = ('time_uniform', 'logsnr_uniform', 'karras')
# How the network output is read (diffusion/process.py `interpret_output`).
MEAN_TYPES = ('x', 'eps', 'v', 'both')
# The loss weightings (diffusion/losses.py `weighted_mse`).
WEIGHT_TYPES = ('constant', 'snr', 'snr_trunc', 'v_mse')
# A student's target (diffusion/losses.py `TARGETS`), and the name of its
# objective (objectives/, 'guided_' + it with a guidance section).
DISTILLATION_TARGETS = ('progressive', 'two_step')
# How students are distilled from the teacher (pipeline/stages.py `METHODS`).
DISTILLATION_METHODS = ('progressive', 'tract', 'consistency')
# Consistency distillation (diffusion/consistency.py): the teacher's one-step
# ODE solver, and the distance between the two consistency outputs ('lpips'
# is refused: it needs VGG weights this package cannot ship).
CONSISTENCY_SOLVERS = ('ddim', 'heun')
CONSISTENCY_DISTANCES = ('l2', 'pseudo_huber')
# How the UNet embeds logSNR (and w): models/unet.py.
LOGSNR_INPUT_TYPES = ('linear', 'sigmoid', 'inv_cos')
# What `remat` keeps for the backward pass (jax.checkpoint_policies names):
# nothing (the least memory), or the matrix products' outputs.
REMAT_POLICIES = ('nothing_saveable', 'dots_saveable',
                  'dots_with_no_batch_dims_saveable')
# Data sets (data/__init__.py builds one for each name).
DATASET_NAMES = ('digits', 'cifar10', 'imagenet64', 'lsun_church128',
                 'lsun_bedroom128', 'tfds', 'image_folder')
# The data sets whose resolution is `image_size`; the others' own.
SIZED_DATASETS = ('tfds', 'image_folder')
IMAGE_SIZES = {'digits': 8, 'cifar10': 32, 'imagenet64': 64,
               'lsun_church128': 128, 'lsun_bedroom128': 128}
# How a TFDS split is read (data/tfds.py).
TFDS_SOURCES = ('auto', 'memory', 'random_access', 'tf_data')



def split_sampler(spec: str) -> tuple[str, str]:
  """'unipc:karras' -> ('unipc', 'karras'); 'unipc' -> ('unipc',
  'time_uniform'). Checked by SAMPLER."""
  name, _, grid = spec.partition(':')
  return name, grid or GRIDS[0]


@dataclasses.dataclass(frozen=True)
class _SamplerCheck(Check):
  """A sampler name, optionally with its grid: `<sampler>[:<grid>]`."""
  grids: tuple = GRIDS

  def describe(self) -> str:
    text = super().describe()
    if len(self.grids) == 1:
      return text
    return f'{text}, each optionally `:<grid>` with a grid of ' + ', '.join(
        f'`{g}`' for g in self.grids)

  def _scalar_problem(self, value):
    if not isinstance(value, str):
      return super()._scalar_problem(value)
    name, grid = split_sampler(value)
    if (name not in self.choices or grid not in self.grids or
        value.endswith(':')):
      return f'must be {self.describe()}, got {value!r}'
    return None


SAMPLER = _SamplerCheck('choice', choices=SAMPLERS)
SAMPLER_LIST = _SamplerCheck('choices', choices=SAMPLERS, nonempty=True)
STUDENT_SAMPLER_LIST = _SamplerCheck('choices', choices=STUDENT_SAMPLERS,
                                     nonempty=True, grids=GRIDS[:1])


@dataclasses.dataclass(frozen=True)
class _DistanceCheck(Check):
  """A consistency distance; 'lpips' is refused with its reason."""

  def _scalar_problem(self, value):
    if value == 'lpips':
      return (f"'lpips' is not available: it needs LPIPS's VGG weights, "
              f'which this package cannot ship; use {self.describe()}')
    return super()._scalar_problem(value)


CONSISTENCY_DISTANCE = _DistanceCheck('choice', choices=CONSISTENCY_DISTANCES)


def require(check: Check, what: str, value, error: type[Exception]):
  """Raises `error('<what>: <problem>')` unless `value` passes `check`."""
  problem = check.problem(value)
  if problem:
    raise error(f'{what}: {problem}')


def variance_fraction(variance: str) -> float:
  """Position of `variance` between 'fixed_small' (0) and 'fixed_large' (1)."""
  if variance == 'fixed_small':
    return 0.
  if variance == 'fixed_large':
    return 1.
  if variance.startswith('fixed_medium:'):
    try:
      frac = float(variance.split(':', 1)[1])
    except ValueError:
      frac = -1.
    if 0. <= frac <= 1.:
      return frac
  raise ValueError(
      f"unknown variance {variance!r}: expected 'fixed_small', 'fixed_large' "
      "or 'fixed_medium:<fraction in [0, 1]>'")


# The paper configs' levels: image size -> (ch_mult, attention at the lowest
# resolution levels, how many). CIFAR-10's attention is at 16 and 8 of 32,
# 16, 8; ImageNet 64's and LSUN 128's at 32, 16 and 8.
_PAPER_SHAPES = {32: ((1, 1, 1), 2), 64: ((1, 2, 3, 4), 3),
                 128: ((1, 2, 4, 6, 8), 3)}


def shape_for_size(image_size: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """`(ch_mult, attn_resolutions)` the paper's configs use at `image_size`.

  32: CIFAR-10's, 64: ImageNet 64's, 128: LSUN's. Another size takes the
  nearest of these (in octaves; ties go to the smaller) with one level more
  (a leading multiplier 1) per doubling above it, one fewer (the lowest
  resolution dropped) per halving below it, and attention at as many of the
  lowest-resolution levels as the paper config has: 256 -> (1, 1, 2, 4, 6, 8)
  with attention at 32, 16, 8; 16 -> (1, 1) at 16, 8; 48 -> ImageNet 64's
  levels at 48, 24, 12, 6, attention at 24, 12, 6.
  """
  octaves = math.log2(image_size)
  paper = min(_PAPER_SHAPES, key=lambda p: (abs(math.log2(p) - octaves), p))
  mults, num_attn = _PAPER_SHAPES[paper]
  extra = round(octaves - math.log2(paper))
  mults = (1,) * extra + mults if extra > 0 else mults[:max(
      1, len(mults) + extra)]
  levels = [image_size // 2**i for i in range(len(mults))]
  return tuple(mults), tuple(sorted(levels[-num_attn:]))


def attention_channels(ch: int, ch_mult, attn_resolutions: Optional[tuple],
                       image_size: int) -> list[int]:
  """The channel counts of the UNet's attention layers: the levels at
  `attn_resolutions` (None: the paper's for `image_size`) and the middle
  block's, which always attends (the official UNet)."""
  if attn_resolutions is None:
    attn_resolutions = shape_for_size(image_size)[1]
  levels = [(image_size // 2**i, ch * m) for i, m in enumerate(ch_mult)]
  return sorted({c for size, c in levels if size in attn_resolutions} |
                {levels[-1][1]})
