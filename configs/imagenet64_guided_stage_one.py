r"""ImageNet 64 guided stage one: the authors' i64_condw_stage1_distill.py.

Stage one of Meng et al. (CVPR 2023, Sec. 4.1) as the authors'
`ddpm_w_distillation/ddpm_w_distillation/config/i64_condw_stage1_distill.py`:
one w-conditioned student (`w_unet3`: the teacher's UNet, dropout 0, plus
`w_dense0` / `w_dense1` embedding w through `w_input_type='inv_cos'`),
initialized from the guided teacher of configs/imagenet64_guided_base.py,
learns the guided teacher's eps_w = (1 + w) eps_cond - w eps_uncond at
data-noised z_t in continuous time, w ~ U(0, 4] per example, SNR weighting;
batch 256, learning rate 3e-4 (constant), EMA 0.9999, the w embedding's
weight ramping 0 -> 1 over the first 10k updates (`train.w_warmup_steps`):

    python -m diffusion_distillation.main \
        --config=configs/imagenet64_guided_stage_one.py \
        --workdir=workdirs/imagenet64_guided_stage_one

The student lands in `checkpoints/guided_1024` (sampled with 1024 DDIM steps
in its grids); configs/imagenet64_guided_distill.py and
imagenet64_guided_nvidia.py distil it. Sample any w of [0, 4], one
evaluation per step: `python -m diffusion_distillation.sample
--workdir=workdirs/imagenet64_guided_stage_one --num_steps=256 --guidance=1`.

Parameters: exactly the authors' `w_unet3.UNet` tree for this config, 634
leaves, 296,639,619 parameters (tests/test_authors_guidance.py compares it
leaf by leaf).

Length: 50k updates, ours. The authors' config allows 1M
(`steps_per_iter`); their stage-two config reads update 20k of a run that
continued this one (`stage1_batch256_dropout0_continue_.../checkpoint_20000`).

Cost: our estimate, not a measurement: each update is a student
forward+backward and the teacher's conditional and unconditional passes, 5
passes of 211 GFLOPs per image, about 1.4e19 FLOPs for 50k updates at batch
256, roughly 2.5 hours on 64 TPUv4 chips at an assumed 25% of peak.
"""

from diffusion_distillation.configs import common
from diffusion_distillation.configs import imagenet64_guided_base


def get_config():
  return common.guided_stage_one(
      imagenet64_guided_base.get_config(),
      teacher_checkpoint_path='workdirs/imagenet64_guided_base',
      batch_size=256, learning_rate=3e-4, num_updates=50_000)
