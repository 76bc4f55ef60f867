r"""ImageNet 64x64 distillation, 1024 -> 1 steps: official imagenet64_distill.

Starts from the released class-conditional teacher
`gs://gresearch/diffusion-distillation/imagenet_original` (the official
`imagenet64_base.py` model, sampled with 1024 DDIM steps) and halves the
student's sampler steps 10 times, 50k updates each, ending with a 1-step
student. Every hyperparameter below is the official config's; what our
schema adds is marked "ours".

Run (one machine, any number of local GPUs; the global batch of 2048 is split
over them, without gradient accumulation, so it needs many accelerators):

    python -m diffusion_distillation.main \
        --config=configs/imagenet64_distill.py \
        --workdir=/path/to/imagenet64_distill

Cloud TPU VM (the paper used 64 TPUv4 chips, a v4-128; see
launch/README.md):

    export TPU_NAME=dd-imagenet ZONE=us-central2-b ACCELERATOR_TYPE=v4-128
    export CONFIG=configs/imagenet64_distill.py
    export WORKDIR=gs://BUCKET/imagenet64_distill
    launch/tpu_vm.sh all

Reading `gs://` needs a GCS backend (`pip install gcsfs`) or a local copy:
`gsutil -m cp -r gs://gresearch/diffusion-distillation/imagenet_original .`
and `--config.distillation.teacher_checkpoint_path=./imagenet_original`. Our
own teacher works too: pass the workdir of a configs/imagenet64_base.py run.
On accelerators with fast bfloat16 add `--config.model.dtype=bfloat16`.

Fields: as in the official distillation config, `train.*` holds the
distillation optimizer settings (learning rate 1e-4, no warmup, no weight
decay, no EMA); `distillation.learning_rate` follows `train.learning_rate`, so
`--config.train.learning_rate=...` changes it (an explicit
`--config.distillation.learning_rate=...` wins). The learning rate decays
linearly to 0 over each halving (official `learning_rate_anneal_steps` =
`steps_per_iter`). `model.args` is the teacher's architecture, including its
training dropout 0.1; the student trains with `distillation.dropout` = 0, as
the official student does. `train.num_train_steps` = 0: the teacher is not
trained here (to train it, run configs/imagenet64_base.py first).

Cost. The paper ran on 64 TPUv4 chips. Our estimate, not a measurement:
10 x 50k = 500k updates at batch 2048, each one student forward+backward and
two teacher forward passes of a 211 GFLOP network, are about 1.1e21 FLOPs:
roughly 3 days on 64 TPUv4 chips at an assumed 25% of peak. Data: TFDS
`imagenet2012` (manual download, see configs/imagenet64_base.py). Evaluation
(off by default, `python -m diffusion_distillation.evaluate`) samples 50k
images per row; limit the teacher rows with `--teacher_steps`.
"""

import ml_collections


def get_config():
  """Returns the ImageNet 64x64 distillation config."""
  # Shared values: the fields that follow them (`.identity()`) change with
  # an override of the field that holds them, and only in that direction.
  start_num_steps = ml_collections.FieldReference(1024)
  learning_rate = ml_collections.FieldReference(1e-4)

  config = ml_collections.ConfigDict()
  config.seed = 0

  config.dataset = dict(
      name='imagenet64',
      args=dict(class_conditional=True, randflip=True),
      data_dir='',  # ours: '' = the TFDS default data directory
  )

  config.model = dict(
      args=dict(
          ch=192,
          emb_ch=768,
          ch_mult=(1, 2, 3, 4),
          num_res_blocks=3,
          attn_resolutions=(8, 16, 32),
          num_heads=None,  # heads of head_dim channels instead
          head_dim=64,
          dropout=0.1,  # the teacher's; the student uses distillation.dropout
          logsnr_input_type='inv_cos',
          resblock_resample=True,
      ),
      mean_type='both',
      logvar_type='fixed_large',
      mean_loss_weight_type='snr_trunc',
      # The teacher was trained in continuous time; each student's step count
      # comes from its stage (the official config wrote end_num_steps here).
      train_num_steps=0,
      eval_sampling_num_steps=start_num_steps.identity(),  # the teacher's
      train_logsnr_schedule=dict(
          name='cosine', logsnr_min=-20., logsnr_max=20.),
      eval_logsnr_schedule=dict(
          name='cosine', logsnr_min=-20., logsnr_max=20.),
      eval_clip_denoised=True,
      dtype='float32',  # ours; 'bfloat16' for TPU / recent GPUs
  )
  config.sampler = 'ddim'

  config.train = dict(
      num_train_steps=0,  # the teacher comes from teacher_checkpoint_path
      batch_size=2048,
      optimizer='adam',
      learning_rate=learning_rate,
      learning_rate_warmup_steps=0,
      adam_beta1=0.9,  # the official optimizer's defaults
      adam_beta2=0.999,
      weight_decay=0.,
      ema_decay=0.,
      grad_clip=1.0,
      substeps=10,
      enable_update_skip=False,
      log_loss_every_steps=100,
      checkpoint_every_steps=5000,  # ours
      checkpoint_every_secs=1500,
      keep_checkpoints=2,  # ours
  )

  config.distillation = dict(
      teacher_checkpoint_path=(
          'gs://gresearch/diffusion-distillation/imagenet_original'),
      start_num_steps=start_num_steps,
      end_num_steps=1,
      steps_per_iter=50_000,
      learning_rate=learning_rate.identity(),
      learning_rate_anneal_type='linear',
      weight_decay=0.,
      ema_decay=0.,
      dropout=0.,
  )

  config.eval = dict(
      run_after_training=False,
      metric='inception',
      num_samples=50_000,
      batch_size=500,
      samplers=('ddim', 'ancestral'),
      teacher_max_steps=start_num_steps.identity(),
      inception_path='',  # set it: path to the 2015-12-05 Inception weights
      grid_samples=64,
  )
  return config
