r"""CIFAR-10 guided stage two: the authors' cifar_condw_stage2_distill.py.

Stage two of Meng et al. (CVPR 2023, Sec. 4.2) as the authors'
`ddpm_w_distillation/ddpm_w_distillation/config/cifar_condw_stage2_distill.py`:
progressive distillation, 1024 -> 1 DDIM steps, of the w-conditioned
student of configs/cifar10_guided_stage_one.py (read from
`workdirs/cifar10_guided_stage_one/checkpoints/guided_1024`), the same w ~
U(0, 4] to teacher and student; 50k updates per halving at batch 128,
learning rate 1e-4 annealed linearly, EMA 0, truncated-SNR weighting:

    python -m diffusion_distillation.main \
        --config=configs/cifar10_guided_distill.py \
        --workdir=workdirs/cifar10_guided_distill

Cost: our estimate, not a measurement: 11 x 50k updates x 128 images x 5
passes of 34 GFLOPs, about 1.2e19 FLOPs: roughly 8 hours on 8 TPUv4 chips at
an assumed 25% of peak.
"""

from diffusion_distillation.configs import common
from diffusion_distillation.configs import cifar10_guided_base


def get_config():
  return common.guided_stage_two(
      cifar10_guided_base.get_config(),
      stage_one_workdir='workdirs/cifar10_guided_stage_one',
      batch_size=128, target='progressive')
