"""Sampling a model in batches sharded over all devices, as uint8 images."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_distillation.diffusion import sampling
from diffusion_distillation.errors import ModelError
from diffusion_distillation.models import images
from diffusion_distillation.parallel import sharding


class SampleError(ModelError):
  """A sampling request that cannot be served (bad sampler or step count)."""


@functools.lru_cache(maxsize=None)
def compiled_sampler(model, sampler: str, mesh, guided: bool = False):
  """One compiled sampler per model and sampler; the step count is data.

  `guided`: a fifth argument is the guidance strength w, data too.
  """
  rep = sharding.replicated(mesh)

  def run(params, rng, labels, num_steps, *w):
    return model.generate(params, rng, labels, num_steps=num_steps,
                          sampler=sampler,
                          batch_sharding=sharding.batch_sharding(mesh),
                          guidance=w[0] if w else None)

  return jax.jit(run, in_shardings=(rep, rep, sharding.batch_sharding(mesh),
                                    rep) + ((rep,) if guided else ()),
                 out_shardings=rep)


def default_labels(num_samples: int, num_classes: int) -> np.ndarray:
  """Balanced class labels (all zeros when unconditional)."""
  return (np.arange(num_samples) % num_classes).astype(np.int32)


def generate(model, params, *, mesh, num_samples: int, num_steps: int,
             seed: int, sampler: str = 'ddim', batch_size: int = 256,
             labels=None, guidance=None):
  """Samples `num_samples` images (uint8) in batches sharded over all devices.

  Returns (images [M, H, W, C] uint8, labels [M] int32). Batch k uses
  fold_in(PRNGKey(seed), k), so results depend on the seed and batch size only.
  `guidance`: the guidance strength w of a guided model (`model.bind`).
  """
  if sampler not in sampling.SAMPLERS:
    raise SampleError(f'unknown sampler {sampler!r}; known: {sampling.SAMPLERS}')
  labels = (default_labels(num_samples, model.num_classes) if labels is None
            else np.asarray(labels, np.int32))
  # (The unguided call keeps the three-argument cache key of callers that
  # look its program up.)
  fn = (compiled_sampler(model, sampler, mesh) if guidance is None else
        compiled_sampler(model, sampler, mesh, True))
  w = () if guidance is None else (jnp.float32(guidance),)
  key = jax.random.PRNGKey(seed)
  samples = sharding.map_batches(
      lambda k, y: fn(params, jax.random.fold_in(key, k), y,
                      jnp.int32(num_steps), *w),
      labels[:num_samples], batch_size=batch_size, mesh=mesh)
  return images.to_uint8(samples), labels
