r"""ImageNet 64 guided distillation, stage two for the stochastic sampler.

The authors' `ddpm_w_distillation/ddpm_w_distillation/config/
i64_condw_stage2_nvidia_distill.py`: configs/imagenet64_guided_distill.py
with `two_nvidia_distillation=True` (`distillation.target='two_step'`
here): each N-step student learns a 2/N jump (two teacher DDIM steps of
1/N, `dpm.Model.two_nvidia_training_losses`), which the stochastic sampler
(the authors' `new_two_step_nvidia`) takes before adding noise back up one
step:

    python -m diffusion_distillation.main \
        --config=configs/imagenet64_guided_nvidia.py \
        --workdir=workdirs/imagenet64_guided_nvidia

    python -m diffusion_distillation.sample \
        --workdir=workdirs/imagenet64_guided_nvidia --num_steps=4 \
        --guidance=1 --sampler=stochastic --output=guided.npz

The 1-step student is sampled with DDIM (one step of either sampler is the
same x prediction). Cost and memory: as configs/imagenet64_guided_distill.py.
"""

from diffusion_distillation.configs import common
from diffusion_distillation.configs import imagenet64_guided_base


def get_config():
  return common.guided_stage_two(
      imagenet64_guided_base.get_config(),
      stage_one_workdir='workdirs/imagenet64_guided_stage_one',
      batch_size=256, target='two_step')
