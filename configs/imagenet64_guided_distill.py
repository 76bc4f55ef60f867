r"""ImageNet 64 guided stage two: the authors' i64_condw_stage2_distill.py.

Stage two of Meng et al. (CVPR 2023, Sec. 4.2) as the authors'
`ddpm_w_distillation/ddpm_w_distillation/config/i64_condw_stage2_distill.py`:
progressive distillation, 1024 -> 512 -> ... -> 1 DDIM steps, of the
w-conditioned student of configs/imagenet64_guided_stage_one.py (read from
`workdirs/imagenet64_guided_stage_one/checkpoints/guided_1024`), teacher and
student given the same w ~ U(0, 4] per example; 50k updates per halving at
batch 256, learning rate 1e-4 annealed linearly to 0 within each, EMA 0,
truncated-SNR weighting, no w warm-up:

    python -m diffusion_distillation.main \
        --config=configs/imagenet64_guided_distill.py \
        --workdir=workdirs/imagenet64_guided_distill

Sample any w of [0, 4] from one student, deterministically or with the
stochastic sampler (`--sampler=stochastic`; the students of
configs/imagenet64_guided_nvidia.py are trained for it):

    python -m diffusion_distillation.sample \
        --workdir=workdirs/imagenet64_guided_distill --num_steps=4 \
        --guidance=1 --output=guided.npz

Evaluation (off by default, `python -m diffusion_distillation.evaluate`)
samples 50k images per row at each w of 0, 0.3, 1, 2, 4 (the authors'
`dir_sample_i64_condw_stage2.py`), with DDIM and the stochastic sampler;
limit it with `--num_samples`.

Cost: our estimate, not a measurement: each update is a student
forward+backward and two teacher passes, 5 passes of 211 GFLOPs per image,
so 11 x 50k updates at batch 256 are about 1.5e20 FLOPs, roughly a day on
64 TPUv4 chips at an assumed 25% of peak.

Memory: about that of configs/imagenet64_distill.py at the same batch;
`python -m diffusion_distillation.benchmark --memory
--config=imagenet64_guided_distill` measures it (docs/scaling.md, Memory and
compile time).
"""

from diffusion_distillation.configs import common
from diffusion_distillation.configs import imagenet64_guided_base


def get_config():
  return common.guided_stage_two(
      imagenet64_guided_base.get_config(),
      stage_one_workdir='workdirs/imagenet64_guided_stage_one',
      batch_size=256, target='progressive')
