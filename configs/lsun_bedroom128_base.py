r"""LSUN Bedroom 128x128 teacher: official bedroom128_base.py, ported.

Trains the unconditional 128x128 LSUN bedroom diffusion model that
progressive distillation starts from: predicts both x and eps ('both'),
continuous time, cosine logSNR schedule, 1024-step DDIM sampler, attention
with 64-channel heads. Every hyperparameter below is the official config's;
what our schema adds is marked "ours".

Run (one machine, any number of local GPUs; the global batch of 2048 is split
over them, without gradient accumulation, so it needs many accelerators):

    python -m diffusion_distillation.main \
        --config=configs/lsun_bedroom128_base.py \
        --workdir=/path/to/lsun_bedroom128_base

Cloud TPU VM (the paper used 64 TPUv4 chips, a v4-128; see
launch/README.md):

    export TPU_NAME=dd-bedroom ZONE=us-central2-b ACCELERATOR_TYPE=v4-128
    export CONFIG=configs/lsun_bedroom128_base.py
    export WORKDIR=gs://BUCKET/lsun_bedroom128_base
    launch/tpu_vm.sh all

On accelerators with fast bfloat16 (TPU, A100/H100) add
`--config.model.dtype=bfloat16` (activations in bfloat16, parameters and the
loss stay float32); the official code computes in float32.

Then distill it: configs/lsun_bedroom128_distill.py with
`--config.distillation.teacher_checkpoint_path=/path/to/lsun_bedroom128_base`.

Training length (ours): the official config does not set one, and we could not
confirm the paper's. We use 400k updates at batch 2048; change it with
`--config.train.num_train_steps=N`. Not ported: the official
`eval_every_steps` (evaluate the finished workdir with
`python -m diffusion_distillation.evaluate`) and
`retain_checkpoint_every_steps=20000` (we keep the last `keep_checkpoints`).

Cost. The paper ran on 64 TPUv4 chips. Our estimate, not a measurement: the
network is 140M parameters and 130 GFLOPs per 128x128 forward pass (XLA cost
analysis of our UNet), so 400k updates x 2048 images x 3 passes are about
3e20 FLOPs: roughly 1 day on 64 TPUv4 chips at an assumed 25% of peak (months
on a single GPU). Data: TFDS `lsun/bedroom` (3.0M training images, about 43 GB,
downloaded on first use; `--config.dataset.data_dir` sets the TFDS data
directory).
"""

import ml_collections


def get_config():
  """Returns the LSUN bedroom 128x128 teacher config."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.dataset = dict(
      name='lsun_bedroom128',
      args=dict(class_conditional=False, randflip=True),
      data_dir='',  # ours: '' = the TFDS default data directory
  )

  config.model = dict(
      args=dict(
          ch=64,
          emb_ch=768,
          ch_mult=(1, 2, 4, 6, 8),
          num_res_blocks=3,
          attn_resolutions=(8, 16, 32),
          num_heads=None,  # heads of head_dim channels instead
          head_dim=64,
          dropout=0.1,
          logsnr_input_type='inv_cos',
          resblock_resample=True,
      ),
      mean_type='both',
      logvar_type='fixed_large',
      mean_loss_weight_type='snr_trunc',
      train_num_steps=0,  # continuous-time training
      eval_sampling_num_steps=1024,
      train_logsnr_schedule=dict(
          name='cosine', logsnr_min=-20., logsnr_max=20.),
      eval_logsnr_schedule=dict(
          name='cosine', logsnr_min=-20., logsnr_max=20.),
      eval_clip_denoised=True,
      dtype='float32',  # ours; 'bfloat16' for TPU / recent GPUs
  )
  config.sampler = 'ddim'

  config.train = dict(
      num_train_steps=400_000,  # ours (see the module docstring)
      batch_size=2048,
      optimizer='adam',
      learning_rate=3e-4,
      learning_rate_warmup_steps=1000,
      adam_beta1=0.9,  # the official optimizer's defaults
      adam_beta2=0.999,
      weight_decay=0.,
      ema_decay=0.9999,
      grad_clip=1.0,
      substeps=10,
      enable_update_skip=False,
      log_loss_every_steps=100,
      checkpoint_every_steps=5000,  # ours
      checkpoint_every_secs=900,
      keep_checkpoints=2,  # ours
  )

  config.eval = dict(
      run_after_training=False,
      metric='inception',
      num_samples=50_000,
      batch_size=500,
      samplers=('ddim', 'ancestral'),
      teacher_max_steps=config.model.get_ref(
          'eval_sampling_num_steps').identity(),
      inception_path='',  # set it: path to the 2015-12-05 Inception weights
      grid_samples=64,
  )
  return config
