"""The diffusion maths: pure functions of arrays, no networks, no state.

`process` holds the forward process, the x/eps/v conversions, the DDIM and
ancestral steps and the distillation target; `schedules` the logSNR
schedules; `losses` the training objectives; `sampling` the N-step sampler
loop, `solvers` the training-free ODE solvers it runs for a teacher
(DPM-Solver++, UniPC, iPNDM, Heun) and `grids` their step grids. The public names of `process` and `get_logsnr_schedule` are re-exported
here, so `from diffusion_distillation import diffusion` gives the maths.
"""

from diffusion_distillation.diffusion.process import alpha_sigma
from diffusion_distillation.diffusion.process import ancestral_step
from diffusion_distillation.diffusion.process import broadcast_from_left
from diffusion_distillation.diffusion.process import ddim_step
from diffusion_distillation.diffusion.process import diffuse
from diffusion_distillation.diffusion.process import distillation_target
from diffusion_distillation.diffusion.process import eps_from_x
from diffusion_distillation.diffusion.process import forward_dist
from diffusion_distillation.diffusion.process import interpret_output
from diffusion_distillation.diffusion.process import log1mexp
from diffusion_distillation.diffusion.process import MEAN_TYPES
from diffusion_distillation.diffusion.process import posterior
from diffusion_distillation.diffusion.process import Prediction
from diffusion_distillation.diffusion.process import v_from_x_eps
from diffusion_distillation.diffusion.process import variance_fraction
from diffusion_distillation.diffusion.process import x_from_eps
from diffusion_distillation.diffusion.process import x_from_v
from diffusion_distillation.diffusion.schedules import get_logsnr_schedule

__all__ = [
    'alpha_sigma',
    'ancestral_step',
    'broadcast_from_left',
    'ddim_step',
    'diffuse',
    'distillation_target',
    'eps_from_x',
    'forward_dist',
    'interpret_output',
    'log1mexp',
    'MEAN_TYPES',
    'posterior',
    'Prediction',
    'v_from_x_eps',
    'variance_fraction',
    'x_from_eps',
    'x_from_v',
    'get_logsnr_schedule',
]
