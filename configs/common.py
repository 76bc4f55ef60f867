"""What the paper configs (configs/<data set>_{base,distill}.py) share.

Not a config: each paper config imports it and passes its data set's values
to `base_config` or `distill_from`. They start from the defaults
(`diffusion_distillation/config/fields.py`, the embedded digits teacher) and
set the official google-research/diffusion_distillation values where those
differ. Official fields that are not implemented (e.g.
`retain_checkpoint_every_steps`: we keep the last `keep_checkpoints`) are
refused by name; in-training FID is not ported (evaluate a finished workdir
with `python -m diffusion_distillation.evaluate`).
"""

import ml_collections

from diffusion_distillation import config as config_lib


def base_config(*, dataset, class_conditional, model_args, mean_type,
                num_train_steps, batch_size, learning_rate, weight_decay):
  """A teacher trained in continuous time, sampled with 1024 DDIM steps."""
  config = config_lib.default_config()
  config.dataset.name = dataset
  config.dataset.args.class_conditional = class_conditional
  config.dataset.args.randflip = True
  config.model.args.update(num_res_blocks=3, resblock_resample=True,
                           **model_args)
  config.model.mean_type = mean_type
  config.model.eval_sampling_num_steps = 1024
  config.train.update(
      num_train_steps=num_train_steps,  # ours: the official configs set none
      batch_size=batch_size,
      learning_rate=learning_rate,
      weight_decay=weight_decay,
      learning_rate_warmup_steps=1000,
      adam_beta2=0.999,  # the official optimizer's default
      ema_decay=0.9999,
      substeps=10,
      eval_every_steps=10000,  # the eval split's loss with the EMA parameters
      checkpoint_every_steps=5000,  # ours
      checkpoint_every_secs=900,
  )
  config.eval.update(run_after_training=False, metric='inception',
                     num_samples=50_000)
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
  stays the teacher's): the distillation section's defaults. The teacher
  comes from `teacher_checkpoint_path`, so `train.num_train_steps` is 0. As
  in the official configs, the optimizer's learning rate is
  `train.learning_rate`; `distillation.learning_rate` follows it unless
  overridden itself.
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
  # eval.teacher_max_steps follows start_num_steps too.
  return config_lib.add_section(
      config, 'distillation', teacher_checkpoint_path=teacher_checkpoint_path,
      start_num_steps=start_num_steps)
