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


# --- Guided distillation as the authors' google-research ddpm_w_distillation
# (Meng et al., "On Distillation of Guided Diffusion Models", CVPR 2023):
# a guided teacher (config/*_retrain_unet3.py), stage one
# (config/*_condw_stage1_distill.py), stage two (*_condw_stage2_distill.py)
# and its "nvidia" variant (*_condw_stage2_nvidia_distill.py), each its own
# run. Their `get_config()` calls a sweep helper that was not released, and
# no config gives a run's length: the update counts below are read off the
# checkpoint names the next stage's config loads.

# The w the authors evaluate (config/dir_sample_i64_condw_stage2.py).
GUIDED_EVAL_W = (0., 0.3, 1., 2., 4.)
# The stage-one student's sampler steps: the grid stage two starts from.
GUIDED_START_STEPS = 1024


def guided_teacher_config(*, dataset, model_args, num_train_steps,
                          batch_size, learning_rate, weight_decay,
                          eval_steps):
  """The authors' *_retrain_unet3.py: a v-prediction teacher with label
  dropout (`uncond_prob` 0.1, `model.cond_drop_prob` here), SNR weighting,
  a 10k-update warm-up and 'fixed_medium:0.3' ancestral variance."""
  config = base_config(dataset=dataset, class_conditional=True,
                       model_args=model_args, mean_type='v',
                       num_train_steps=num_train_steps, batch_size=batch_size,
                       learning_rate=learning_rate, weight_decay=weight_decay)
  config.model.cond_drop_prob = 0.1
  config.model.mean_loss_weight_type = 'snr'
  config.model.logvar_type = 'fixed_medium:0.3'
  config.model.eval_sampling_num_steps = eval_steps
  config.train.learning_rate_warmup_steps = 10_000
  config.eval.guidance = GUIDED_EVAL_W
  return config


def guided_stage_one(teacher, *, teacher_checkpoint_path, batch_size,
                     learning_rate, num_updates):
  """The authors' *_condw_stage1_distill.py: the w-conditioned student
  (`w_unet3`, dropout 0) matches the guided teacher in continuous time, w ~
  U(0, 4], its w embedding warmed up over 10k updates, at a constant
  `learning_rate` with EMA 0.9999; stage one only (no halving)."""
  config = distill_from(teacher,
                        teacher_checkpoint_path=teacher_checkpoint_path,
                        start_num_steps=GUIDED_START_STEPS,
                        learning_rate=learning_rate)
  config.distillation.end_num_steps = GUIDED_START_STEPS
  config.model.args.dropout = 0.
  config.train.batch_size = batch_size
  config_lib.add_section(config, 'guidance', num_updates=num_updates,
                         w_warmup_steps=10_000, learning_rate=learning_rate,
                         learning_rate_anneal_type='none', ema_decay=0.9999)
  config.eval.update(student_samplers=('ddim',), teacher_steps=(256,))
  return config


def guided_stage_two(teacher, *, stage_one_workdir, batch_size, target):
  """The authors' *_condw_stage2{,_nvidia}_distill.py: progressive
  distillation 1024 -> 1 of the stage-one student of `stage_one_workdir`
  (read from its `checkpoints/guided_1024`; no stage one here), 50k updates
  per halving at 1e-4 annealed linearly, EMA 0, truncated-SNR weighting;
  `target` 'two_step' is the nvidia variant, for the stochastic sampler."""
  config = distill_from(
      teacher, teacher_checkpoint_path=(
          f'{stage_one_workdir}/checkpoints/guided_{GUIDED_START_STEPS}'),
      start_num_steps=GUIDED_START_STEPS, learning_rate=1e-4)
  config.model.args.dropout = 0.
  config.model.mean_loss_weight_type = 'snr_trunc'
  config.model.logvar_type = 'fixed_large'
  config.train.batch_size = batch_size
  config.distillation.target = target
  config_lib.add_section(config, 'guidance', num_updates=0)
  # Both samplers: the stochastic one needs 2 or more steps.
  config.eval.update(student_samplers=('ddim', 'stochastic'),
                     teacher_steps=(256,))
  return config
