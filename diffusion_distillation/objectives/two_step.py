"""The two-step target: students for the stochastic sampler.

The guided-distillation authors' "nvidia" loss
(`dpm.Model.two_nvidia_training_losses`, google-research
ddpm_w_distillation): the student's DDIM step from z_t jumps 2/N, where two
teacher steps of 1/N land (`losses.two_step_target`); the stochastic sampler
then renoises to t - 1/N. Otherwise as progressive distillation.
"""

from diffusion_distillation.objectives import progressive


class TwoStep(progressive.Progressive):
  target = 'two_step'
