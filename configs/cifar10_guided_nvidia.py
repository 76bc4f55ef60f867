r"""CIFAR-10 guided distillation, stage two for the stochastic sampler.

The authors' `ddpm_w_distillation/ddpm_w_distillation/config/
cifar_condw_stage2_nvidia_distill.py`: configs/cifar10_guided_distill.py
with `two_nvidia_distillation=True` (`distillation.target='two_step'`): each
N-step student learns the 2/N jump that the stochastic sampler
(`new_two_step_nvidia`) takes before renoising one step:

    python -m diffusion_distillation.main \
        --config=configs/cifar10_guided_nvidia.py \
        --workdir=workdirs/cifar10_guided_nvidia

Cost: as configs/cifar10_guided_distill.py.
"""

from diffusion_distillation.configs import common
from diffusion_distillation.configs import cifar10_guided_base


def get_config():
  return common.guided_stage_two(
      cifar10_guided_base.get_config(),
      stage_one_workdir='workdirs/cifar10_guided_stage_one',
      batch_size=128, target='two_step')
