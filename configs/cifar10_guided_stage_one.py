r"""CIFAR-10 guided stage one: the authors' cifar_condw_stage1_distill.py.

Stage one of Meng et al. (CVPR 2023, Sec. 4.1) as the authors'
`ddpm_w_distillation/ddpm_w_distillation/config/cifar_condw_stage1_distill.py`:
the w-conditioned student (`w_unet3`, dropout 0, w through 'inv_cos'),
initialized from the guided teacher of configs/cifar10_guided_base.py,
learns the guided teacher's prediction at data-noised z_t in continuous
time, w ~ U(0, 4], SNR weighting; batch 128, learning rate 1e-4 (constant),
EMA 0.9999, the w embedding warmed up over 10k updates:

    python -m diffusion_distillation.main \
        --config=configs/cifar10_guided_stage_one.py \
        --workdir=workdirs/cifar10_guided_stage_one

The student lands in `checkpoints/guided_1024`, which
configs/cifar10_guided_distill.py and cifar10_guided_nvidia.py distil.

Parameters: exactly the authors' `w_unet3.UNet` tree for this config, 460
leaves, 61,329,155 parameters (tests/test_authors_guidance.py).

Length: 620k updates, the checkpoint (`cifar_stage1_.../checkpoint_620000`)
the authors' stage-two config reads.

Cost: our estimate, not a measurement: 620k updates x 128 images x 5 passes
of 34 GFLOPs, about 1.3e19 FLOPs: roughly 9 hours on 8 TPUv4 chips at an
assumed 25% of peak.
"""

from diffusion_distillation.configs import common
from diffusion_distillation.configs import cifar10_guided_base


def get_config():
  return common.guided_stage_one(
      cifar10_guided_base.get_config(),
      teacher_checkpoint_path='workdirs/cifar10_guided_base',
      batch_size=128, learning_rate=1e-4, num_updates=620_000)
