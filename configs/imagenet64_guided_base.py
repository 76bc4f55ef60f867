r"""ImageNet 64x64 guided teacher: configs/imagenet64_base.py + label dropout.

The classifier-free guided teacher that guided distillation starts from
(Meng et al., "On Distillation of Guided Diffusion Models", CVPR 2023, arXiv
2210.03142, ImageNet 64x64): the class-conditional model of the official
imagenet64_base.py, trained with each label dropped to a "no class" label
with probability p_uncond = `model.cond_drop_prob` = 0.1 (Ho & Salimans,
"Classifier-Free Diffusion Guidance", 2022, found 0.1 and 0.2 best on
ImageNet 64; 0.1 is the value we use):

    python -m diffusion_distillation.main \
        --config=configs/imagenet64_guided_base.py \
        --workdir=workdirs/imagenet64_guided_base

Then distill it with configs/imagenet64_guided_distill.py, which reads this
workdir as its teacher. Sample it at guidance w (two network evaluations per
step) with `python -m diffusion_distillation.sample --workdir=... --model=teacher
--num_steps=1024 --guidance=W`.

Parameters: the official tree plus one row of `class_emb` (1001 x 768, the
"no class" label), so the released class-conditional checkpoints (trained
without label dropout) do not load into it; configs/imagenet64_base.py is
unchanged.

Cost: as configs/imagenet64_base.py (label dropout costs nothing): our
estimate, not a measurement, about 5e20 FLOPs for 400k updates at batch 2048,
roughly 1.5 days on 64 TPUv4 chips at an assumed 25% of peak. Evaluation (off
by default) samples the teacher at each w of `eval.guidance` (the paper's
ImageNet 64 values), two evaluations per step.

Memory: about that of configs/imagenet64_base.py / imagenet64_distill.py
(the same UNet plus two small w layers); `python -m
diffusion_distillation.benchmark --memory --config=imagenet64_guided_base` compiles
this config's own updates and gives their bytes per device and the batch that
fits (README, Memory and compile time).
"""

from diffusion_distillation.configs import imagenet64_base


def get_config():
  config = imagenet64_base.get_config()
  config.model.cond_drop_prob = 0.1
  config.eval.guidance = (0., 0.3, 1., 2., 4.)
  return config
