r"""CIFAR-10 guided teacher: the authors' config/cifar_retrain_unet3.py.

The classifier-free guided teacher of guided distillation (Meng et al., "On
Distillation of Guided Diffusion Models", CVPR 2023, arXiv 2210.03142) on
CIFAR-10, as google-research `ddpm_w_distillation/ddpm_w_distillation/
config/cifar_retrain_unet3.py` trains it (model `unet3`): the CIFAR-10 UNet
of Progressive Distillation (ch 256, ch_mult 1, 1, 1, attention at 16 and 8,
one head, dropout 0.2), class-conditional, predicting v, each label dropped
to "no class" with probability 0.1 (`uncond_prob`), SNR weighting, batch
128, learning rate 2e-4 after a 10k-update warm-up, weight decay 0.001, EMA
0.9999, sampled with 1024 DDIM steps:

    python -m diffusion_distillation.main \
        --config=configs/cifar10_guided_base.py \
        --workdir=workdirs/cifar10_guided_base

Then configs/cifar10_guided_stage_one.py reads this workdir as its teacher.

Parameters: the authors' `unet3` tree, 456 leaves, 60,016,387 parameters
(`class_emb` 11 x 1024, row 0 the "no class" label).

Length: the authors' configs give none; 480k updates is the checkpoint
(`cifar10_retrain_v_stage0_.../checkpoint_480000`) their stage-one config
reads.

Cost: our estimate, not a measurement: 480k updates x 128 images x 3 passes
of a 34 GFLOP network, about 6e18 FLOPs: roughly 4 hours on 8 TPUv4 chips,
or a day on one H100 in float32, at an assumed 25% of peak.
"""

from diffusion_distillation.configs import common


def get_config():
  return common.guided_teacher_config(
      dataset='cifar10',
      model_args=dict(ch=256, emb_ch=1024, ch_mult=(1, 1, 1),
                      attn_resolutions=(8, 16), num_heads=1, dropout=0.2),
      num_train_steps=480_000, batch_size=128, learning_rate=2e-4,
      weight_decay=0.001, eval_steps=1024)
