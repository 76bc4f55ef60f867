r"""ImageNet 64x64 class-conditional teacher: official imagenet64_base.py.

The model that progressive distillation starts from:

    python -m diffusion_distillation.main \
        --config=configs/imagenet64_base.py --workdir=/path/to/imagenet64_base

Then distill it with configs/imagenet64_distill.py and
`--config.distillation.teacher_checkpoint_path=/path/to/imagenet64_base`.

Training length (ours; the official config sets none, and we could not confirm
the paper's): 400k updates at batch 2048, about 640 epochs of ImageNet.

Cost. The paper used 64 TPUv4 chips (Cloud TPU `ACCELERATOR_TYPE=v4-128`, see
launch/README.md); the batch of 2048 is split over the devices without
gradient accumulation. Our estimate, not a measurement: the network is 296M
parameters and 211 GFLOPs per 64x64 forward pass (XLA cost analysis of our
UNet), so 400k updates x 2048 images x 3 passes are about 5e20 FLOPs: roughly
1.5 days on 64 TPUv4 chips at an assumed 25% of peak (months on a single
GPU). Data: TFDS `imagenet2012`, which TFDS cannot download; place the
ILSVRC2012 tars in its manual directory first.

Memory (`benchmark --memory`, XLA's estimate, float32): 4.6 GB plus 1.35 GB
per image per device (0.24 GB with `--config.model.remat=true`). At batch
2048: 91 GB per chip on 32 TPU v4 chips as it is, 20 GB with remat (fits);
on 8 x 80 GB GPUs (256 images each) remat and
`--config.train.num_microbatches=2` (50 GB); it does not fit one GPU at that
batch. See the table in docs/scaling.md (Memory and compile time).
"""

from diffusion_distillation.configs import common


def get_config():
  return common.base_config(
      dataset='imagenet64',
      class_conditional=True,
      model_args=dict(
          ch=192,
          emb_ch=768,
          ch_mult=(1, 2, 3, 4),
          attn_resolutions=(8, 16, 32),
          num_heads=None,  # heads of head_dim channels instead
          head_dim=64,
          dropout=0.1,
      ),
      mean_type='both',
      num_train_steps=400_000,
      batch_size=2048,
      learning_rate=3e-4,
      weight_decay=0.,
  )
