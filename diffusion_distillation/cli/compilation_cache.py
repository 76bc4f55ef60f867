"""The persistent XLA compilation cache the command-line tools use.

Compiling the UNet's update or sampler takes from seconds (digits, CPU) to
minutes (ImageNet 64, TPU); with the cache a resumed run, `sample` and
`evaluate` load the programs an earlier run compiled. JAX keys each entry by
the program, its devices and the compiler, so a stale entry is never used.
"""

import os
import sys

from absl import flags

from diffusion_distillation import paths

ENV = 'JAX_COMPILATION_CACHE_DIR'  # read by JAX itself, as are its options

_ENABLED = flags.DEFINE_boolean(
    'compilation_cache', True,
    f'Keep compiled programs on disk, in ${ENV} or else under the cache '
    'directory ($DD_CACHE_DIR, or ~/.cache/diffusion_distillation)/jax, so '
    'that reruns, sample and evaluate skip compiling what an earlier run '
    'compiled. --nocompilation_cache turns it off.')


def configure():
  """Turns the cache on (the default) or off, as `--compilation_cache` says.

  Through JAX's environment variables, so that importing JAX can wait until a
  command's flags are checked; a JAX imported already is told directly.
  Programs that compile in under a second (JAX's
  `jax_persistent_cache_min_compile_time_secs`) are not kept.
  """
  if _ENABLED.value:
    os.environ[ENV] = paths.compilation_cache_dir()
  os.environ['JAX_ENABLE_COMPILATION_CACHE'] = str(_ENABLED.value).lower()
  if 'jax' in sys.modules:
    jax = sys.modules['jax']
    jax.config.update('jax_enable_compilation_cache', _ENABLED.value)
    jax.config.update('jax_compilation_cache_dir', os.environ.get(ENV))
