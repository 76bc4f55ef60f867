"""The Python API: load a model and sample it, in three lines.

    import diffusion_distillation as dd
    model = dd.load('workdirs/digits', num_steps=4)   # a distilled student
    images = model.sample(16, seed=0)                  # uint8 [16, H, W, C]

`load` reads a training workdir, a file written by `export`, or an official
released checkpoint together with its config (`config_names()`); every wrong
combination raises `ModelError`. The command-line `sample` and `export` tools
go through the same functions.
"""

from diffusion_distillation.api.configs import config_names
from diffusion_distillation.api.loading import load
from diffusion_distillation.api.loading import student_steps
from diffusion_distillation.api.model import Model
from diffusion_distillation.errors import ModelError

__all__ = ['ModelError', 'Model', 'config_names', 'load', 'student_steps']
