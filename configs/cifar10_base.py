r"""CIFAR-10 teacher ("original model"): official cifar_base.py, ported.

Trains the unconditional 32x32 CIFAR-10 diffusion model that progressive
distillation starts from: x-prediction, continuous time, cosine logSNR
schedule, 1024-step DDIM sampler. Every hyperparameter below is the official
config's; what our schema adds is marked "ours".

Run (one machine, any number of local GPUs; the global batch is split over
them):

    python -m diffusion_distillation.main \
        --config=configs/cifar10_base.py \
        --workdir=/path/to/cifar10_base

Cloud TPU VM (the paper used 8 TPUv4 chips, a v4-16; see launch/README.md):

    export TPU_NAME=dd-cifar ZONE=us-central2-b ACCELERATOR_TYPE=v4-16
    export CONFIG=configs/cifar10_base.py
    export WORKDIR=gs://BUCKET/cifar10_base
    launch/tpu_vm.sh all

On accelerators with fast bfloat16 (TPU, A100/H100) add
`--config.model.dtype=bfloat16` (activations in bfloat16, parameters and the
loss stay float32); the official code computes in float32.

Then distill it: configs/cifar10_distill.py with
`--config.distillation.teacher_checkpoint_path=/path/to/cifar10_base`.

Training length (ours): the official config does not set one. We use 800k
updates at batch 128, the CIFAR-10 training length of Ho et al. (2020, DDPM)
at the same batch size; change it with `--config.train.num_train_steps=N`.
The official `eval_every_steps` and in-training FID are not ported: evaluate
the finished workdir with `python -m diffusion_distillation.evaluate`.

Cost. The paper trained on 8 TPUv4 chips for CIFAR-10 (and gives no wall-clock
time for the teacher). Our estimate, not a measurement: the network is 60M
parameters and 34 GFLOPs per 32x32 forward pass (XLA cost analysis of our
UNet), so 800k updates x 128 images x 3 passes are about 1.0e19 FLOPs:
roughly 5 hours on 8 TPUv4 chips, or about a day on one H100 in float32, at an
assumed 25% of peak. Data: TFDS `cifar10` (downloaded on first use, or set
`--config.dataset.data_dir`).
"""

import ml_collections


def get_config():
  """Returns the CIFAR-10 teacher config (see the module docstring)."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.dataset = dict(
      name='cifar10',
      args=dict(class_conditional=False, randflip=True),
      data_dir='',  # ours: '' = the TFDS default data directory
  )

  config.model = dict(
      args=dict(
          ch=256,
          emb_ch=1024,
          ch_mult=(1, 1, 1),
          num_res_blocks=3,
          attn_resolutions=(8, 16),
          num_heads=1,
          dropout=0.2,
          logsnr_input_type='inv_cos',
          resblock_resample=True,
      ),
      mean_type='x',
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
      num_train_steps=800_000,  # ours (see the module docstring)
      batch_size=128,
      optimizer='adam',
      learning_rate=2e-4,
      learning_rate_warmup_steps=1000,
      adam_beta1=0.9,  # the official optimizer's defaults
      adam_beta2=0.999,
      weight_decay=0.001,
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
