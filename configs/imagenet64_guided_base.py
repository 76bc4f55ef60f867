r"""ImageNet 64x64 guided teacher: the authors' config/i64_retrain_unet3.py.

The classifier-free guided teacher of guided distillation (Meng et al., "On
Distillation of Guided Diffusion Models", CVPR 2023, arXiv 2210.03142), as
google-research `ddpm_w_distillation/ddpm_w_distillation/config/
i64_retrain_unet3.py` trains it (model `unet3`): the ImageNet 64 UNet of
Progressive Distillation (ch 192, ch_mult 1, 2, 3, 4, attention at 32, 16, 8
with heads of 64 channels, dropout 0.1) predicting v, each label dropped to
"no class" with probability 0.1 (`uncond_prob`; `model.cond_drop_prob`
here), SNR weighting (eps-MSE), batch 2048, learning rate 3e-4 after a
10k-update warm-up, EMA 0.9999, sampled with 256 DDIM steps:

    python -m diffusion_distillation.main \
        --config=configs/imagenet64_guided_base.py \
        --workdir=workdirs/imagenet64_guided_base

Then configs/imagenet64_guided_stage_one.py reads this workdir as its
teacher. Sample it at guidance w (two network evaluations per step) with
`python -m diffusion_distillation.sample --workdir=... --model=teacher
--num_steps=256 --guidance=W`.

Parameters: the authors' `unet3` tree, 630 leaves, 295,900,803 parameters
(`class_emb` 1001 x 768, row 0 the "no class" label); the released
Progressive Distillation checkpoints (class-conditional, no label dropout)
do not load into it.

Length: the authors' configs give none; 220k updates is the checkpoint
(`retrain_snr_2048_.../checkpoint_220000`) their stage-one config reads.

Cost: our estimate, not a measurement, about 2.8e20 FLOPs for 220k updates
at batch 2048 (a 211 GFLOP network, three passes per image), roughly a day
on 64 TPUv4 chips at an assumed 25% of peak. Evaluation (off by default)
samples the teacher at each w of `eval.guidance` (the authors' 0, 0.3, 1, 2,
4), two evaluations per step.

Memory: as configs/imagenet64_base.py; `python -m
diffusion_distillation.benchmark --memory --config=imagenet64_guided_base`
compiles this config's own updates and gives their bytes per device and the
batch that fits (docs/scaling.md, Memory and compile time).
"""

from diffusion_distillation.configs import common


def get_config():
  return common.guided_teacher_config(
      dataset='imagenet64',
      model_args=dict(ch=192, emb_ch=768, ch_mult=(1, 2, 3, 4),
                      attn_resolutions=(8, 16, 32), num_heads=None,
                      head_dim=64, dropout=0.1),
      num_train_steps=220_000, batch_size=2048, learning_rate=3e-4,
      weight_decay=0., eval_steps=256)
