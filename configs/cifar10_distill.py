r"""CIFAR-10 distillation, 8192 -> 1 steps: official cifar_distill.py, ported.

Starts from the released teacher
`gs://gresearch/diffusion-distillation/cifar_original` (the official
`cifar_base.py` model, sampled with 8192 DDIM steps) and halves the student's
sampler steps 13 times, 50k updates each, ending with a 1-step student.
Every hyperparameter below is the official config's; what our schema adds is
marked "ours".

Run (one machine, any number of local GPUs; the global batch is split over
them):

    python -m diffusion_distillation.main \
        --config=configs/cifar10_distill.py \
        --workdir=/path/to/cifar10_distill

Cloud TPU VM (the paper used 8 TPUv4 chips, a v4-16; see launch/README.md):

    export TPU_NAME=dd-cifar ZONE=us-central2-b ACCELERATOR_TYPE=v4-16
    export CONFIG=configs/cifar10_distill.py
    export WORKDIR=gs://BUCKET/cifar10_distill
    launch/tpu_vm.sh all

Reading `gs://` needs a GCS backend (`pip install gcsfs`) or a local copy:
`gsutil -m cp -r gs://gresearch/diffusion-distillation/cifar_original .` and
`--config.distillation.teacher_checkpoint_path=./cifar_original`. Our own
teacher works too: pass the workdir of a configs/cifar10_base.py run.
On accelerators with fast bfloat16 add `--config.model.dtype=bfloat16`.

Fields: as in the official distillation config, `train.*` holds the
distillation optimizer settings (learning rate 5e-5, no warmup, no weight
decay, no EMA); `distillation.learning_rate` follows `train.learning_rate`, so
`--config.train.learning_rate=...` changes it (an explicit
`--config.distillation.learning_rate=...` wins). The learning rate decays
linearly to 0 over each halving (official `learning_rate_anneal_steps` =
`steps_per_iter`). `model.args` is the teacher's architecture, including its
training dropout 0.2; the student trains with `distillation.dropout` = 0, as
the official student does. `train.num_train_steps` = 0: the teacher is not
trained here (to train it, run configs/cifar10_base.py first).

Cost. The paper ran on 8 TPUv4 chips for CIFAR-10. Our estimate, not a
measurement: 13 x 50k = 650k updates at batch 128, each one student
forward+backward and two teacher forward passes of a 34 GFLOP network, are
about 1.4e19 FLOPs: roughly 7 hours on 8 TPUv4 chips, or 1.5 days on one
H100 in float32, at an assumed 25% of peak. Evaluation (off by default,
`python -m diffusion_distillation.evaluate`) samples 50k images per row; the
teacher rows at up to 8192 steps dominate it, so limit them with
`--teacher_steps`.
"""

import ml_collections


def get_config():
  """Returns the CIFAR-10 distillation config."""
  # Shared values: the fields that follow them (`.identity()`) change with
  # an override of the field that holds them, and only in that direction.
  start_num_steps = ml_collections.FieldReference(8192)
  learning_rate = ml_collections.FieldReference(5e-5)

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
          dropout=0.2,  # the teacher's; the student uses distillation.dropout
          logsnr_input_type='inv_cos',
          resblock_resample=True,
      ),
      mean_type='x',
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
      batch_size=128,
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
      checkpoint_every_secs=900,
      keep_checkpoints=2,  # ours
  )

  config.distillation = dict(
      teacher_checkpoint_path=(
          'gs://gresearch/diffusion-distillation/cifar_original'),
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
