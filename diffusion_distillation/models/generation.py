"""Sampling a model in batches sharded over all devices, as uint8 images."""

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_distillation.config import choices
from diffusion_distillation.errors import ModelError
from diffusion_distillation.models import images
from diffusion_distillation.parallel import sharding


class SampleError(ModelError):
  """A sampling request that cannot be served (bad sampler or step count)."""


SEED_RANGE = (-2**63, 2**63 - 1)


def seed_key(seed) -> np.ndarray:
  """The PRNG key of a user's seed: the raw threefry key JAX makes of it as
  a 64-bit integer ([high word, low word]; `PRNGKey(seed)` for 0 <= seed <
  2**32), so that every integer in SEED_RANGE is a seed of its own.

  Raises:
    SampleError: not an integer (bool, float, str, None), or out of range.
  """
  if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int,
                                                               np.integer)):
    raise SampleError(f'seed={seed!r}: pass an integer in [-2**63, 2**63 - 1]')
  if not SEED_RANGE[0] <= int(seed) <= SEED_RANGE[1]:
    raise SampleError(f'seed={seed}: out of range; pass an integer in '
                      '[-2**63, 2**63 - 1]')
  bits = int(seed) % 2**64
  return np.array([bits >> 32, bits & 0xffffffff], np.uint32)


@functools.lru_cache(maxsize=None)
def compiled_sampler(model, sampler: str, mesh, guided: bool = False):
  """One compiled sampler per model and sampler; the step count is data.

  Image `i` of a call is drawn from fold_in(key, i): the key of the seed and
  the image's index among all images of the request. `guided`: a sixth
  argument is the guidance strength w, data too.
  """
  rep = sharding.replicated(mesh)
  split = sharding.batch_sharding(mesh)

  def run(params, key, labels, index, num_steps, *w):
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(index)
    return model.generate(params, keys, labels, num_steps=num_steps,
                          sampler=sampler, batch_sharding=split,
                          guidance=w[0] if w else None)

  return jax.jit(run, in_shardings=(rep, rep, split, split, rep) +
                 ((rep,) if guided else ()), out_shardings=rep)


def available_memory() -> Optional[int]:
  """Bytes of host memory available now (Linux: MemAvailable), or None."""
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def check_fits(num_samples: int, data_shape):
  """Raises SampleError if `num_samples` images cannot be held in host
  memory (as float32 while they are made, then uint8): better now, in one
  line, than after minutes of sampling, at the out-of-memory killer."""
  needed = num_samples * math.prod(data_shape) * 5
  available = available_memory()
  if available is not None and needed > available:
    raise SampleError(
        f'{num_samples} samples of shape {tuple(data_shape)} need about '
        f'{needed / 2**30:.3g} GiB of host memory, more than the '
        f'{available / 2**30:.3g} GiB available; ask for fewer')


def default_labels(num_samples: int, num_classes: int) -> np.ndarray:
  """Balanced class labels (all zeros when unconditional)."""
  return (np.arange(num_samples) % num_classes).astype(np.int32)


def generate(model, params, *, mesh, num_samples: int, num_steps: int,
             seed: int, sampler: str = 'ddim', batch_size: int = 256,
             labels=None, guidance=None):
  """Samples `num_samples` images (uint8) in batches sharded over all devices.

  Returns (images [M, H, W, C] uint8, labels [M] int32). Image i depends on
  (seed, i) and its label only: the first k of M images are those of
  `num_samples=k`, at any `batch_size` and device count. `guidance`: the
  guidance strength w of a guided model (`model.bind`).
  """
  choices.require(choices.SAMPLER, 'sampler', sampler, SampleError)
  check_fits(num_samples, model.data_shape)
  labels = (default_labels(num_samples, model.num_classes) if labels is None
            else np.asarray(labels, np.int32))
  # (The unguided call keeps the three-argument cache key of callers that
  # look its program up.)
  fn = (compiled_sampler(model, sampler, mesh) if guidance is None else
        compiled_sampler(model, sampler, mesh, True))
  w = () if guidance is None else (jnp.float32(guidance),)
  key = seed_key(seed)
  samples = sharding.map_batches(
      lambda _, batch: fn(params, key, *batch, jnp.int32(num_steps), *w),
      (labels[:num_samples], np.arange(num_samples, dtype=np.int32)),
      batch_size=batch_size, mesh=mesh)
  return images.to_uint8(samples), labels
