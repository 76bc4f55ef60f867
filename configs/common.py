"""What the paper configs (configs/<data set>_{base,distill}.py) share.

Not a config: each paper config loads this file by path (`--config=` loads
config files by path, not as a package) and passes its data set's values to
`base_config` or `distill_from`. The values are the official
google-research/diffusion_distillation configs'; what our schema adds is
marked "ours". Official fields that are not implemented (e.g.
`retain_checkpoint_every_steps`: we keep the last `keep_checkpoints`) are
refused by name (diffusion_distillation/official_fields.py); in-training FID is
not ported (evaluate a finished workdir with `python -m
diffusion_distillation.evaluate`).
"""

import importlib.util
import os

import ml_collections


def load_config(name):
  """`get_config()` of configs/<name>.py."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f'{name}.py')
  spec = importlib.util.spec_from_file_location(f'configs_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def base_config(*, dataset, class_conditional, model_args, mean_type,
                num_train_steps, batch_size, learning_rate, weight_decay):
  """A teacher trained in continuous time, sampled with 1024 DDIM steps."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.dataset = dict(
      name=dataset,
      args=dict(class_conditional=class_conditional, randflip=True),
      data_dir='',  # ours: '' = the TFDS default data directory
  )

  config.model = dict(
      args=dict(
          num_res_blocks=3,
          logsnr_input_type='inv_cos',
          resblock_resample=True,
          **model_args,
      ),
      mean_type=mean_type,
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
      num_train_steps=num_train_steps,  # ours: the official configs set none
      batch_size=batch_size,
      optimizer='adam',
      learning_rate=learning_rate,
      learning_rate_warmup_steps=1000,
      adam_beta1=0.9,  # the official optimizer's defaults
      adam_beta2=0.999,
      weight_decay=weight_decay,
      ema_decay=0.9999,
      grad_clip=1.0,
      substeps=10,
      enable_update_skip=False,
      # ours: True clips each device's gradient before averaging them, as the
      # official step_fn (see README, "Official config fields")
      grad_clip_per_device=False,
      optimizer_beta=0.9,  # for optimizer='momentum' or 'nesterov'
      avg_type='',  # 'ema' or 'aa' (with avg_steps) when ema_decay is None
      avg_steps=0,
      log_loss_every_steps=100,
      eval_every_steps=10000,  # the eval split's loss with the EMA parameters
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
      inception_path='',  # empty: downloaded once into the metric cache
      grid_samples=64,
  )
  return config


def lsun128_base_config(dataset):
  """The official church128_base.py and bedroom128_base.py.

  They differ only in the data set.
  """
  return base_config(
      dataset=dataset,
      class_conditional=False,
      model_args=dict(
          ch=64,
          emb_ch=768,
          ch_mult=(1, 2, 4, 6, 8),
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


def distill_from(base, *, teacher_checkpoint_path, start_num_steps,
                 learning_rate, checkpoint_every_secs=900):
  """`base`'s teacher, distilled from `start_num_steps` DDIM steps to 1.

  Each halving of the student's steps trains 50k updates with the learning
  rate decaying linearly to 0 (the official `learning_rate_anneal_steps` =
  `steps_per_iter`), without weight decay, EMA or dropout (`model.args.dropout`
  stays the teacher's). The teacher comes from `teacher_checkpoint_path`, so
  `train.num_train_steps` is 0. As in the official configs, the optimizer's
  learning rate is `train.learning_rate`; `distillation.learning_rate` follows
  it unless overridden itself.
  """
  config = ml_collections.ConfigDict(base.to_dict())  # without base's links
  # The fields that follow these (`.identity()`) change with an override of
  # the field that holds them, and only in that direction.
  start_num_steps = ml_collections.FieldReference(start_num_steps)
  learning_rate = ml_collections.FieldReference(learning_rate)

  # The teacher's sampler; each student's step count comes from its stage
  # (the official config wrote end_num_steps in model.train_num_steps).
  config.model.eval_sampling_num_steps = start_num_steps.identity()
  config.train.num_train_steps = 0
  config.train.learning_rate = learning_rate
  config.train.checkpoint_every_secs = checkpoint_every_secs
  # The official distillation config's values. The distillation stages read
  # distillation.* instead; these apply when this config also trains its
  # teacher (teacher_checkpoint_path='' and train.num_train_steps > 0), and
  # to the training program that `benchmark` times.
  config.train.learning_rate_warmup_steps = 0
  config.train.weight_decay = 0.
  config.train.ema_decay = 0.
  config.distillation = dict(
      teacher_checkpoint_path=teacher_checkpoint_path,
      start_num_steps=start_num_steps,
      end_num_steps=1,
      steps_per_iter=50_000,
      learning_rate=learning_rate.identity(),
      learning_rate_anneal_type='linear',
      weight_decay=0.,
      ema_decay=0.,
      dropout=0.,
  )
  config.eval.teacher_max_steps = start_num_steps.identity()
  return config
