r"""LSUN Bedroom 128x128 distillation, 1024 -> 1 steps.

The official bedroom128_distill.py, ported: distils the released teacher
`gs://gresearch/diffusion-distillation/bedroom_original` (the model of
configs/lsun_bedroom128_base.py, sampled with 1024 DDIM steps) in 10 halvings
of 50k updates each, down to a 1-step student:

    python -m diffusion_distillation.main \
        --config=configs/lsun_bedroom128_distill.py \
        --workdir=/path/to/lsun_bedroom128_distill

Reading `gs://` needs the `gcs` extra (gcsfs); otherwise copy the
teacher with `gsutil -m cp -r` and pass the copy, or the workdir of a
configs/lsun_bedroom128_base.py run, as
`--config.distillation.teacher_checkpoint_path`.

Cost. The paper used 64 TPUv4 chips (Cloud TPU `ACCELERATOR_TYPE=v4-128`, see
launch/README.md). Network, batch and updates are those of
configs/lsun_church128_distill.py: about 6.7e20 FLOPs, roughly 2 days on 64
TPUv4 chips at an assumed 25% of peak (our estimate, not a measurement).
Data: TFDS `lsun/bedroom`. Evaluation (off by default) samples 50k images per
row; limit the teacher rows with `--teacher_steps`.

Memory: as configs/lsun_church128_distill.py (the same network and batch;
`benchmark --memory` gives this config's own figures).
"""

from diffusion_distillation.configs import common
from diffusion_distillation.configs import lsun_bedroom128_base


def get_config():
  return common.distill_from(
      lsun_bedroom128_base.get_config(),
      teacher_checkpoint_path=(
          'gs://gresearch/diffusion-distillation/bedroom_original'),
      start_num_steps=1024,
      learning_rate=1e-4,
      checkpoint_every_secs=1500,
  )
