r"""CIFAR-10 teacher ("original model"): official cifar_base.py, ported.

The unconditional 32x32 model that progressive distillation starts from:

    python -m diffusion_distillation.main \
        --config=configs/cifar10_base.py --workdir=/path/to/cifar10_base

Then distill it with configs/cifar10_distill.py and
`--config.distillation.teacher_checkpoint_path=/path/to/cifar10_base`.

Training length (ours; the official config sets none): 800k updates at batch
128, the CIFAR-10 training length of Ho et al. (2020, DDPM) at that batch.

Cost. The paper used 8 TPUv4 chips (Cloud TPU `ACCELERATOR_TYPE=v4-16`, see
launch/README.md) and gives no wall-clock time for the teacher. Our estimate,
not a measurement: the network is 60M parameters and 34 GFLOPs per 32x32
forward pass (XLA cost analysis of our UNet), so 800k updates x 128 images x 3
passes are about 1.0e19 FLOPs: roughly 5 hours on 8 TPUv4 chips, or about a
day on one H100 in float32, at an assumed 25% of peak. Data: TFDS `cifar10`,
downloaded on first use.

Memory (`benchmark --memory`, XLA's estimate, float32): 0.9 GB plus 177 MB
per image per device, 23.5 GB at batch 128 on one device; with
`--config.model.remat=true` 50 MB per image, 7.2 GB. Fits a 24 GB GPU with
remat, 8 GPUs or TPU chips as it is (docs/scaling.md, Memory and compile time).
"""

from diffusion_distillation.configs import common


def get_config():
  return common.base_config(
      dataset='cifar10',
      class_conditional=False,
      model_args=dict(
          ch=256,
          emb_ch=1024,
          ch_mult=(1, 1, 1),
          attn_resolutions=(8, 16),
          num_heads=1,
          dropout=0.2,
      ),
      mean_type='x',
      num_train_steps=800_000,
      batch_size=128,
      learning_rate=2e-4,
      weight_decay=0.001,
  )
