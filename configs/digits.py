r"""The embedded default: scikit-learn's 8x8 digits, teacher + distillation 128 -> 1.

Runs offline on 2 CPU cores in about 10 minutes: trains a small teacher in
continuous time, distills its 128-step DDIM sampler stage by stage down to one
step, writes a sample grid per stage and evaluates every stage with the digits
classifier metric (`digits_fd`, not an Inception FID).

    python -m diffusion_distillation.main --config=configs/digits.py \
        --workdir=/tmp/digits

Any field can be overridden, e.g. `--config.train.num_train_steps=500`.
"""

import ml_collections


def get_config():
  """Returns the digits config (see the module docstring for the command)."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.dataset = dict(
      name='digits',
      args=dict(class_conditional=False, randflip=False),
      data_dir='',
  )

  config.model = dict(
      args=dict(
          ch=32,
          emb_ch=128,
          ch_mult=(1, 1),
          num_res_blocks=1,
          attn_resolutions=(4,),
          num_heads=1,
          dropout=0.1,
          logsnr_input_type='inv_cos',
          resblock_resample=False,
      ),
      mean_type='v',
      logvar_type='fixed_large',
      mean_loss_weight_type='snr_trunc',
      train_num_steps=0,  # continuous-time teacher training
      eval_sampling_num_steps=128,
      train_logsnr_schedule=dict(name='cosine', logsnr_min=-20., logsnr_max=20.),
      eval_logsnr_schedule=dict(name='cosine', logsnr_min=-20., logsnr_max=20.),
      eval_clip_denoised=True,
      dtype='float32',
  )
  config.sampler = 'ddim'

  config.train = dict(
      num_train_steps=1500,
      batch_size=64,
      optimizer='adam',
      learning_rate=2e-3,
      learning_rate_warmup_steps=100,
      adam_beta1=0.9,
      adam_beta2=0.99,
      weight_decay=0.,
      ema_decay=0.995,
      grad_clip=1.0,
      substeps=1,  # XLA:CPU runs gradients inside loops slowly (see train.py)
      enable_update_skip=False,
      grad_clip_per_device=False,
      optimizer_beta=0.9,
      avg_type='',
      avg_steps=0,
      log_loss_every_steps=100,
      eval_every_steps=0,  # no eval-split loss during training
      checkpoint_every_steps=1000,
      checkpoint_every_secs=600,
      keep_checkpoints=2,
  )

  config.distillation = dict(
      teacher_checkpoint_path='',
      start_num_steps=128,
      end_num_steps=1,
      steps_per_iter=150,
      learning_rate=1e-3,
      learning_rate_anneal_type='linear',
      weight_decay=0.,
      ema_decay=0.,
      dropout=0.,
  )

  config.eval = dict(
      run_after_training=True,
      metric='digits',
      num_samples=300,
      batch_size=500,
      samplers=('ddim', 'ancestral'),
      teacher_max_steps=config.distillation.get_ref('start_num_steps').identity(),
      inception_path='',
      grid_samples=64,
  )
  return config
