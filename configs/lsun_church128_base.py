r"""LSUN Church-Outdoor 128x128 teacher: official church128_base.py, ported.

The unconditional model that progressive distillation starts from:

    python -m diffusion_distillation.main \
        --config=configs/lsun_church128_base.py \
        --workdir=/path/to/lsun_church128_base

Then distill it with configs/lsun_church128_distill.py and
`--config.distillation.teacher_checkpoint_path=/path/to/lsun_church128_base`.

Training length (ours; the official config sets none, and we could not confirm
the paper's): 400k updates at batch 2048.

Cost. The paper used 64 TPUv4 chips (Cloud TPU `ACCELERATOR_TYPE=v4-128`, see
launch/README.md); the batch of 2048 is split over the devices without
gradient accumulation. Our estimate, not a measurement: the network is 140M
parameters and 130 GFLOPs per 128x128 forward pass (XLA cost analysis of our
UNet), so 400k updates x 2048 images x 3 passes are about 3e20 FLOPs: roughly
1 day on 64 TPUv4 chips at an assumed 25% of peak (months on a single GPU).
Data: TFDS `lsun/church_outdoor` (126k training images, downloaded on first
use).

Memory (`benchmark --memory`, XLA's estimate, float32): 2.1 GB plus 1.41 GB
per image per device (0.30 GB with `--config.model.remat=true`). At batch
2048 on 32 TPU v4 chips (64 images each): 92 GB per chip as it is, 21 GB
with remat (fits); with more images per device add
`--config.train.num_microbatches` and check with `benchmark --memory`.
"""

from diffusion_distillation.configs import common


def get_config():
  return common.lsun128_base_config('lsun_church128')
