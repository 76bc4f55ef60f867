r"""ImageNet 64x64 distillation, 1024 -> 1 steps: official imagenet64_distill.

Distils the released class-conditional teacher
`gs://gresearch/diffusion-distillation/imagenet_original` (the model of
configs/imagenet64_base.py, sampled with 1024 DDIM steps) in 10 halvings of
50k updates each, down to a 1-step student:

    python -m diffusion_distillation.main \
        --config=configs/imagenet64_distill.py \
        --workdir=/path/to/imagenet64_distill

Reading `gs://` needs the `gcs` extra (gcsfs); otherwise copy the
teacher with `gsutil -m cp -r` and pass the copy, or the workdir of a
configs/imagenet64_base.py run, as
`--config.distillation.teacher_checkpoint_path`.

Cost. The paper used 64 TPUv4 chips (Cloud TPU `ACCELERATOR_TYPE=v4-128`, see
launch/README.md); the batch of 2048 is split over the devices without
gradient accumulation. Our estimate, not a measurement: 500k updates at batch
2048, each one student forward+backward and two teacher forward passes of a
211 GFLOP network, are about 1.1e21 FLOPs: roughly 3 days on 64 TPUv4 chips at
an assumed 25% of peak. Data: TFDS `imagenet2012` (manual download, see
configs/imagenet64_base.py). Evaluation (off by default,
`python -m diffusion_distillation.evaluate`) samples 50k images per row; limit
the teacher rows with `--teacher_steps`.

Memory (`benchmark --memory`, XLA's estimate, float32): 5.8 GB (the student's
state and the teacher) plus 1.29 GB per image per device (0.24 GB with
`--config.model.remat=true`). At batch 2048: 88 GB per chip on 32 TPU v4
chips as it is, 21 GB with remat (fits); on 8 x 80 GB GPUs remat and
`--config.train.num_microbatches=2` (37 GB); on one 24 GB GPU remat and 64
microbatches (16 GB). See the table in docs/scaling.md (Memory and compile time).
"""

from diffusion_distillation.configs import common
from diffusion_distillation.configs import imagenet64_base


def get_config():
  return common.distill_from(
      imagenet64_base.get_config(),
      teacher_checkpoint_path=(
          'gs://gresearch/diffusion-distillation/imagenet_original'),
      start_num_steps=1024,
      learning_rate=1e-4,
      checkpoint_every_secs=1500,
  )
