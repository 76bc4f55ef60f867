"""Progressive Distillation for Fast Sampling of Diffusion Models, in JAX/Flax.

A faithful, runnable port of the official google-research code (Salimans & Ho,
ICLR 2022): train a diffusion teacher, then halve its DDIM sampler's steps stage
by stage with a student that matches two teacher steps in one.

    import diffusion_distillation as dd
    model = dd.load('workdirs/digits', num_steps=4)
    images = model.sample(16, seed=0)  # uint8 [16, H, W, C]

The API (`load`, `Model`, `ModelError`, `config_names`, `student_steps`; see
`diffusion_distillation.api`) is imported on first use, so importing the
package stays cheap (no JAX) for the command-line tools.
"""

__version__ = '0.1.0'

_API = ('ModelError', 'Model', 'config_names', 'load', 'student_steps')
__all__ = list(_API)


def __getattr__(name):
  if name in _API:
    from diffusion_distillation import api  # pylint: disable=g-import-not-at-top
    return getattr(api, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(list(globals()) + list(_API))
