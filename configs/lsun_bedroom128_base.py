r"""LSUN Bedroom 128x128 teacher: official bedroom128_base.py, ported.

The unconditional model that progressive distillation starts from:

    python -m diffusion_distillation.main \
        --config=configs/lsun_bedroom128_base.py \
        --workdir=/path/to/lsun_bedroom128_base

Then distill it with configs/lsun_bedroom128_distill.py and
`--config.distillation.teacher_checkpoint_path=/path/to/lsun_bedroom128_base`.

Training length (ours; the official config sets none, and we could not confirm
the paper's): 400k updates at batch 2048.

Cost. The paper used 64 TPUv4 chips (Cloud TPU `ACCELERATOR_TYPE=v4-128`, see
launch/README.md). Network, batch and updates are those of
configs/lsun_church128_base.py: about 3e20 FLOPs, roughly 1 day on 64 TPUv4
chips at an assumed 25% of peak (our estimate; months on a single GPU).
Data: TFDS `lsun/bedroom` (3.0M training images, about 43 GB, downloaded on
first use).

Memory: as configs/lsun_church128_base.py (the same network and batch;
`benchmark --memory` gives this config's own figures).
"""

from diffusion_distillation.configs import common


def get_config():
  return common.lsun128_base_config('lsun_bedroom128')
