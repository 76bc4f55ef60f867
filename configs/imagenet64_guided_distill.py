r"""ImageNet 64x64 guided distillation, 1024 -> 1 steps (Meng et al., 2023).

Distils the guided teacher of configs/imagenet64_guided_base.py (read from
its workdir, `workdirs/imagenet64_guided_base`; no guided teacher was
released) as in "On Distillation of Guided Diffusion Models" (Meng, Rombach,
Gao, Kingma, Ermon, Ho, Salimans; CVPR 2023; arXiv 2210.03142):

    python -m diffusion_distillation.main \
        --config=configs/imagenet64_guided_distill.py \
        --workdir=workdirs/imagenet64_guided_distill

1. `guided_1024` (stage one, Sec. 4.1): one w-conditioned student,
   initialized from the teacher (w embedded like the logSNR and added to the
   conditioning embedding; its last layer starts at zero), learns the guided
   teacher's x_w = (1 + w) x_cond - w x_uncond at data-noised z_t, with
   w ~ U[0, 4] (`guidance.w_min`, `guidance.w_max`: the range of the paper's
   ImageNet 64 experiments, evaluated at w = 0, 0.3, 1, 2, 4) and the
   truncated-SNR weighting of the base loss. 50k updates (ours: the paper
   does not give this count).
2. `distill_512` ... `distill_1` (stage two, Sec. 4.2): progressive
   distillation of that student with w drawn per example, 50k updates per
   halving at learning rate 1e-4 annealed linearly to 0, as the official
   imagenet64_distill.py.

Sample any w of [0, 4] from one student, deterministically or with the
stochastic sampler (Sec. 5; `--sampler=stochastic`):

    python -m diffusion_distillation.sample \
        --workdir=workdirs/imagenet64_guided_distill --num_steps=4 \
        --guidance=1 --sampler=stochastic --output=guided.npz

Cost. Our estimate, not a measurement, on the paper's 64 TPUv4 chips
(`ACCELERATOR_TYPE=v4-128`, batch 2048 split over the devices) at an assumed
25% of peak: each update is one student forward+backward and two teacher
forward passes (stage one: the conditional and unconditional predictions; stage
two: two DDIM steps) of a 211 GFLOP network, so 11 x 50k updates are about
1.2e21 FLOPs, roughly 3 days. Data: TFDS `imagenet2012` (manual download, see
configs/imagenet64_base.py). Evaluation (off by default, `python -m
diffusion_distillation.evaluate`) samples 50k images per row at each w of
`eval.guidance`, with DDIM and the stochastic sampler; limit it with
`--num_samples` and `--teacher_steps`.

Memory: about that of configs/imagenet64_base.py / imagenet64_distill.py
(the same UNet plus two small w layers); `python -m
diffusion_distillation.benchmark --memory --config=imagenet64_guided_distill` compiles
this config's own updates and gives their bytes per device and the batch that
fits (README, Memory and compile time).
"""

from diffusion_distillation import config as config_lib
from diffusion_distillation.configs import common
from diffusion_distillation.configs import imagenet64_guided_base


def get_config():
  config = common.distill_from(
      imagenet64_guided_base.get_config(),
      teacher_checkpoint_path='workdirs/imagenet64_guided_base',
      start_num_steps=1024,
      learning_rate=1e-4,
      checkpoint_every_secs=1500,
  )
  config_lib.add_section(config, 'guidance')  # w in [0, 4], 50k updates
  config.eval.student_samplers = ('ddim', 'stochastic')
  return config
