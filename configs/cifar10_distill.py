r"""CIFAR-10 distillation, 8192 -> 1 steps: official cifar_distill.py, ported.

Distils the released teacher
`gs://gresearch/diffusion-distillation/cifar_original` (the model of
configs/cifar10_base.py, sampled with 8192 DDIM steps) in 13 halvings of 50k
updates each, down to a 1-step student:

    python -m diffusion_distillation.main \
        --config=configs/cifar10_distill.py --workdir=/path/to/cifar10_distill

Reading `gs://` needs the `gcs` extra (gcsfs); otherwise copy the
teacher with `gsutil -m cp -r` and pass the copy, or the workdir of a
configs/cifar10_base.py run, as `--config.distillation.teacher_checkpoint_path`.

Cost. The paper used 8 TPUv4 chips (Cloud TPU `ACCELERATOR_TYPE=v4-16`, see
launch/README.md). Our estimate, not a measurement: 650k updates at batch 128,
each one student forward+backward and two teacher forward passes of a 34 GFLOP
network, are about 1.4e19 FLOPs: roughly 7 hours on 8 TPUv4 chips, or 1.5 days
on one H100 in float32, at an assumed 25% of peak. Evaluation (off by default,
`python -m diffusion_distillation.evaluate`) samples 50k images per row; the
teacher rows at up to 8192 steps dominate it, so limit them with
`--teacher_steps`.

Memory (`benchmark --memory`, XLA's estimate, float32): 1.1 GB (the student's
state and the teacher) plus 162 MB per image per device, 21.8 GB at batch 128
on one device; with `--config.model.remat=true` 48 MB per image, 7.1 GB.
Fits a 24 GB GPU with remat, 8 GPUs or TPU chips as it is.
"""

from diffusion_distillation.configs import common
from diffusion_distillation.configs import cifar10_base


def get_config():
  return common.distill_from(
      cifar10_base.get_config(),
      teacher_checkpoint_path=(
          'gs://gresearch/diffusion-distillation/cifar_original'),
      start_num_steps=8192,
      learning_rate=5e-5,
  )
