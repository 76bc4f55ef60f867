"""Every config field, declared once: default, check, doc, rerun rule.

The defaults are the embedded default, `configs/digits.py`'s teacher (8x8
digits, minutes on a CPU); the `distillation`, `guidance` and `consistency`
sections are optional (present or absent as a whole; a present one is
completed with these defaults). `official`: 'yes' where the field is the
official configs' own (google-research/diffusion_distillation,
`config/*.py`), else what differs.
The table of all of them is docs/config_fields.md (`python -m
diffusion_distillation.config.table`).
"""

from diffusion_distillation.config import choices
from diffusion_distillation.config.schema import (
    ANY, BOOL, Check, EXTENDS, FREE, FUTURE, Field as F, Same, TEXT, fraction,
    integer, number, one_of, refused)

DTYPES = ('float32', 'bfloat16')
OPTIMIZERS = ('adam', 'momentum', 'nesterov')  # the official optimizers
AVG_TYPES = ('', 'ema', 'aa')  # '': the official avg_type=None
ANNEAL_TYPES = ('linear', 'none')
# The quality metrics `evaluate` computes (the only list of their names).
METRICS = ('digits', 'inception', 'bpd')
# Each metric's values: the headline (lower is better), then the
# Inception-Score-like one (higher is better).
METRIC_VALUES = {'digits': ('digits_fd', 'digits_is'), 'inception': ('fid',
                                                                     'is'),
                 'bpd': ('bpd',)}
# Fields that hold local paths or URLs: the command line makes a local one
# absolute (as its path flags), so that config.json holds where it points.
PATH_FIELDS = ('distillation.teacher_checkpoint_path', 'eval.inception_path',
               'dataset.data_dir', 'dataset.path')
# Sections a config may leave out as a whole.
OPTIONAL_SECTIONS = ('distillation', 'guidance', 'tract', 'consistency')

_SAMPLER = choices.SAMPLER
_SAMPLERS = choices.SAMPLER_LIST
_COUNT = integer(1)
_STEPS = integer(0)
_RATE = number(0., lo_open=True)
_DECAY = number(0.)


def _schedule(section: str) -> dict:
  doc = f'of the {section} logSNR schedule (cosine)'
  return {
      f'model.{section}_logsnr_schedule.name': F(
          'cosine', f'the {section} schedule', one_of('cosine'),
          official='yes'),
      f'model.{section}_logsnr_schedule.logsnr_min': F(
          -20., f'logSNR at t=1 {doc}', number(), official='yes'),
      f'model.{section}_logsnr_schedule.logsnr_max': F(
          20., f'logSNR at t=0 {doc}', number(), official='yes'),
  }


# DDIM, ancestral and every solver, each on the grid that served it best on
# the digits teacher (docs/evaluating.md): PD's time-uniform grid, but Heun's
# logSNR-uniform one (the time-uniform grid's first steps, sigma / alpha from
# e^10 down, break its Euler predictor).
EVAL_SAMPLERS = ('ddim', 'ancestral', 'dpmpp_2m', 'dpmpp_3m', 'unipc', 'ipndm',
                 'heun:logsnr_uniform')

FIELDS = {
    'seed': F(0, 'seed of every random stream (parameters, noise, data order)',
              integer(-2**31, hi=2**31 - 1), official='yes'),
    'sampler': F('ddim', "the teacher's sampler (official 'noisy' is "
                 "'ancestral')", _SAMPLER, FUTURE, 'yes'),
    # --- dataset ---------------------------------------------------------
    'dataset.name': F('digits', 'the data set and its resolution',
                      one_of(*choices.DATASET_NAMES), official=(
                          'names cifar10, imagenet64, lsun_church128, '
                          'lsun_bedroom128')),
    'dataset.data_dir': F('', "TFDS data directory ('': TFDS's default)",
                          TEXT, FREE),
    'dataset.args.class_conditional': F(
        False, 'batches carry the class labels (not for LSUN)', BOOL,
        official='yes'),
    'dataset.args.randflip': F(False, 'training images flipped left-right at '
                               'random', BOOL, FUTURE, 'yes'),
    'dataset.args.image_size': refused(ANY, 'the resolution of the paper '
                                       "data sets is part of dataset.name "
                                       "(e.g. 'imagenet64'); tfds and "
                                       'image_folder data sets take '
                                       'dataset.image_size'),
    'dataset.image_size': F(0, 'resolution of a tfds or image_folder data '
                            "set (square: central crop, resize); 0: the "
                            "paper data sets' own", integer(0)),
    'dataset.source': F('auto', "where a TFDS data set's examples are read "
                        'from: memory, random_access (array_record), '
                        "tf_data (a stream: resume not exact); auto: "
                        'memory up to 4 GiB, else the first that works',
                        one_of(*choices.TFDS_SOURCES), FUTURE),
    'dataset.tfds_name': F('', "the TFDS builder of dataset.name='tfds', "
                           "e.g. 'oxford_flowers102'", TEXT),
    'dataset.image_key': F('image', "the image feature of dataset.name='tfds'",
                           TEXT),
    'dataset.label_key': F('label', "the class feature of dataset.name='tfds'",
                           TEXT),
    'dataset.train_split': F('train', "the training split of "
                             "dataset.name='tfds' (TFDS split syntax)", TEXT),
    'dataset.eval_split': F('test', "the held-out split of "
                            "dataset.name='tfds'", TEXT),
    'dataset.path': F('', 'the folder of an image_folder data set (a '
                      'directory or gs://); read recursively', TEXT),
    'dataset.labels_from_subfolders': F(
        False, "image_folder: each image's class is its top-level sub-folder",
        BOOL),
    'dataset.skip_unreadable': F(False, 'image_folder: skip (and count) files '
                                 'that cannot be decoded instead of stopping',
                                 BOOL),
    'dataset.eval_fraction': F(0.1, "image_folder: the images held out for "
                               'the evaluation split (FID statistics)',
                               number(0., .5, lo_open=True)),
    'dataset.args.subset': refused(ANY, 'the LSUN subset is part of '
                                   "dataset.name here (e.g. 'lsun_church128',"
                                   " 'lsun_bedroom128')"),
    'dataset.args.extra_image_sizes': refused((), (
        'the official data sets add extra_image_<size> arrays to each batch '
        'that no training code reads; not implemented')),
    # --- model: the UNet -------------------------------------------------
    'model.args.ch': F(32, 'base channel count', integer(32, multiple=32),
                       official='yes'),
    'model.args.emb_ch': F(128, 'width of the logSNR / class embedding',
                           _COUNT, official='yes'),
    'model.args.ch_mult': F((1, 1), 'channel multiplier per resolution (): '
                            'by the image size (config/choices.py '
                            'shape_for_size)', Check('ints', lo=1),
                            official='yes'),
    'model.args.num_res_blocks': F(1, 'ResNet blocks per resolution',
                                   _COUNT, official='yes'),
    'model.args.attn_resolutions': F((4,), 'resolutions with attention '
                                     '(None: by the image size)',
                                     Check('ints', lo=1, none=True),
                                     official='yes'),
    'model.args.num_heads': F(1, 'attention heads (or None and head_dim)',
                              integer(1, none=True), official='yes'),
    'model.args.head_dim': F(None, 'channels per attention head (or None and '
                             'num_heads)', integer(1, none=True),
                             official='yes'),
    'model.args.dropout': F(0.1, "dropout in the ResNet blocks (the teacher's)",
                            fraction(), FUTURE, 'yes'),
    'model.args.logsnr_input_type': F(
        'inv_cos', 'how the logSNR enters the network',
        one_of(*choices.LOGSNR_INPUT_TYPES), official='yes'),
    'model.args.resblock_resample': F(False, 'resample with ResNet blocks',
                                      BOOL, official='yes'),
    # --- model: the diffusion process --------------------------------------
    'model.mean_type': F('v', 'what the network predicts',
                         one_of(*choices.MEAN_TYPES), official='yes'),
    'model.logvar_type': F('fixed_large', "ancestral sampler's variance: "
                           "fixed_small, fixed_large, fixed_medium:<fraction>",
                           TEXT, official='yes'),
    'model.mean_loss_weight_type': F('snr_trunc', 'loss weighting',
                                     one_of(*choices.WEIGHT_TYPES),
                                     official='yes'),
    'model.train_num_steps': F(0, 'base training in discrete time with this '
                               'many steps (0: continuous)', _STEPS,
                               official='yes'),
    'model.eval_sampling_num_steps': F(
        128, "the teacher's sampler steps (grids, evaluation)", _COUNT,
        FUTURE, 'yes'),
    **_schedule('train'),
    **_schedule('eval'),
    'model.eval_clip_denoised': F(True, 'clip x predictions to [-1, 1] when '
                                  'sampling', BOOL, official='yes'),
    'model.dtype': F('float32', 'computation dtype (parameters stay float32)',
                     one_of(*DTYPES), FUTURE),
    'model.remat': F(False, "recompute the UNet blocks' activations in the "
                     'backward pass: far less memory, about a third more '
                     'compute', BOOL, FUTURE),
    'model.remat_policy': F('nothing_saveable', 'what remat keeps (a '
                            'jax.checkpoint_policies name)',
                            one_of(*choices.REMAT_POLICIES), FUTURE),
    'model.cond_drop_prob': F(0., 'label dropout of a guided teacher '
                              '(classifier-free guidance; 0: none)',
                              fraction()),
    'model.name': refused('unet_iddpm', "the only architecture is the "
                          "official 'unet_iddpm' (models/unet.py)"),
    'model.architecture': F(
        'unet', "the network: 'unet' (ours, model.args) or 'diffusers' (the "
        "teacher's diffusers folder, distillation.teacher_checkpoint_path)",
        one_of('unet', 'diffusers')),
    'model.logvar_coeff': refused(0., (
        'learned variances are not implemented (the official dpm.Model '
        'stores logvar_coeff but never reads it)')),
    # --- train -----------------------------------------------------------
    'train.num_train_steps': F(1500, 'base (teacher) training updates',
                               _STEPS, EXTENDS),
    'train.batch_size': F(64, 'global batch, over all devices and processes',
                          _COUNT, FUTURE, 'yes'),
    'train.optimizer': F('adam', 'the optimizer (flax.optim semantics)',
                         one_of(*OPTIMIZERS), FUTURE, 'yes'),
    'train.learning_rate': F(2e-3, 'peak learning rate of base training',
                             _RATE, FUTURE, 'yes'),
    'train.learning_rate_warmup_steps': F(100, 'linear warmup from 0',
                                          _STEPS, FUTURE, 'applied here'),
    'train.adam_beta1': F(0.9, "Adam's beta1", fraction(), FUTURE, 'yes'),
    'train.adam_beta2': F(0.99, "Adam's beta2", fraction(), FUTURE, 'yes'),
    'train.weight_decay': F(0., 'decoupled weight decay', _DECAY, FUTURE,
                            'yes'),
    'train.ema_decay': F(0.995, 'EMA of the parameters (None: by avg_type)',
                         fraction(none=True), FUTURE, 'yes'),
    'train.grad_clip': F(1.0, 'gradient clipping by global norm', _RATE,
                         FUTURE, 'yes'),
    'train.substeps': F(1, 'updates per compiled call', _COUNT, FREE, 'yes'),
    'train.num_microbatches': F(1, "gradient accumulation: each device's "
                                'share of the batch in this many sequential '
                                'parts, for that fraction of the activation '
                                'memory; the same update', _COUNT, FREE),
    'train.enable_update_skip': F(False, 'skip updates with non-finite '
                                  'results', BOOL, FUTURE, 'yes'),
    'train.gpu_deterministic_ops': F(
        False, "XLA's deterministic GPU kernels (--xla_gpu_deterministic_ops"
        '): exact resume and the same model at any device count on GPUs, at '
        'some speed (CPU and TPU are deterministic without it)', BOOL, FREE),
    'train.grad_clip_per_device': F(False, "clip each device's gradient before"
                                    ' averaging (the official step_fn)', BOOL,
                                    FUTURE),
    'train.optimizer_beta': F(0.9, 'momentum of momentum / nesterov',
                              fraction(), FUTURE, 'yes'),
    'train.avg_type': F('', "parameter average when ema_decay is None: 'ema' "
                        "or 'aa' ('': none)", one_of(*AVG_TYPES), FUTURE,
                        'yes'),
    'train.avg_steps': F(0, 'steps of the avg_type average', _STEPS, FUTURE,
                         'yes'),
    'train.log_loss_every_steps': F(100, 'steps between logged losses',
                                    _COUNT, FREE, 'yes'),
    'train.eval_every_steps': F(0, "steps between the eval split's loss (0: "
                                'never)', _STEPS, FREE, 'yes'),
    'train.checkpoint_every_steps': F(1000, 'steps between checkpoints',
                                      _COUNT, FREE),
    'train.checkpoint_every_secs': F(600, 'seconds between checkpoints (inf: '
                                     'never by time)', number(
                                         0., lo_open=True, inf=True), FREE,
                                     'yes'),
    'train.keep_checkpoints': F(2, 'checkpoints kept per stage', _COUNT, FREE),
    'train.retain_checkpoint_every_steps': refused(ANY, (
        'not implemented: each stage keeps its last train.keep_checkpoints '
        'checkpoints; copy the ones to retain')),
    'train.learning_rate_anneal_type': refused(ANY, (
        'set distillation.learning_rate_anneal_type instead: each '
        'distillation stage anneals over its distillation.steps_per_iter '
        'updates (the official learning_rate_anneal_steps)')),
    'train.learning_rate_anneal_steps': refused(ANY, (
        'each distillation stage anneals over distillation.steps_per_iter '
        'updates (set distillation.learning_rate_anneal_type)')),
    # --- distillation (optional) -------------------------------------------
    'distillation.teacher_checkpoint_path': F(
        '', "the teacher: a workdir, an official checkpoint ('': this run's "
        'base stage)', TEXT, official='yes'),
    'distillation.start_num_steps': F(
        Same('model.eval_sampling_num_steps'), "the teacher's sampler steps",
        _COUNT, official='yes'),
    'distillation.end_num_steps': F(1, "the last student's steps", _COUNT,
                                    FUTURE, 'yes'),
    'distillation.steps_per_iter': F(50_000, 'updates per halving', _COUNT,
                                     official='yes'),
    'distillation.learning_rate': F(Same('train.learning_rate'),
                                    "students' peak learning rate", _RATE,
                                    FUTURE),
    'distillation.learning_rate_anneal_type': F(
        'linear', 'decay to 0 within each stage', one_of(*ANNEAL_TYPES),
        FUTURE),
    'distillation.weight_decay': F(0., "students' weight decay", _DECAY,
                                   FUTURE),
    'distillation.ema_decay': F(0., "students' EMA", fraction(), FUTURE),
    'distillation.dropout': F(0., "students' dropout", fraction(), FUTURE),
    'distillation.method': F(
        'progressive', 'how students are distilled: progressive (halving the '
        'steps, stage by stage), tract (the phases of the tract section) '
        'or consistency (one student for any steps; the consistency '
        'section)', one_of(*choices.DISTILLATION_METHODS)),
    'distillation.target': F(
        'progressive', "the students' target: progressive (two teacher "
        'steps of 1/(2N), for DDIM) or two_step (two of 1/N: the 2/N jump of '
        'the stochastic sampler)', one_of(*choices.DISTILLATION_TARGETS),
        official="the authors' two_nvidia_distillation=True is two_step"),
    'distillation.only_finetune_temb': refused(
        False, 'the official code never reads it; all parameters train'),
    # --- guidance (optional): guided distillation --------------------------
    'guidance.w_min': F(0., 'lowest guidance strength w trained', number(0.),
                        official="the authors' train_w_schedule.logsnr_min"),
    'guidance.w_max': F(4., 'highest guidance strength w trained',
                        number(0., lo_open=True),
                        official="the authors' train_w_schedule.logsnr_max"),
    'guidance.w_input_type': F(
        'inv_cos', "how the students' w enters its embedding",
        one_of(*choices.LOGSNR_INPUT_TYPES), official='yes (model.args)'),
    'guidance.w_const': F(0.3, "a student's w when a sampler is given none",
                          number(0.), FREE, "the authors' w_sample_const"),
    'guidance.num_updates': F(50_000, 'updates of stage one (0: none, the '
                              'teacher is w-conditioned already)', _STEPS),
    'guidance.w_warmup_steps': F(
        0, "stage one: the w embedding's weight ramps 0 -> 1 over these "
        'updates', _STEPS, FUTURE, 'yes (train.w_warmup_steps)'),
    'guidance.learning_rate': F(Same('distillation.learning_rate'),
                                "stage one's peak learning rate", _RATE,
                                FUTURE),
    'guidance.learning_rate_anneal_type': F(
        Same('distillation.learning_rate_anneal_type'), "stage one's decay",
        one_of(*ANNEAL_TYPES), FUTURE),
    'guidance.ema_decay': F(Same('distillation.ema_decay'), "stage one's EMA",
                            fraction(), FUTURE),
    # --- tract (optional): TRACT, distillation.method = 'tract' ----------
    # (apple/ml-tract's flags for each: docs/methods.md)
    'tract.phases': F((1,), "each phase's student steps, decreasing (each "
                      "divides the one before, the first the teacher's)",
                      Check('ints', lo=1, nonempty=True)),
    'tract.updates_per_phase': F(50_000, 'updates per phase', _COUNT),
    'tract.self_teacher_ema': F(0.5, "the self-teacher's EMA momentum "
                                '(bias-corrected)', fraction(), FUTURE),
    'tract.clip_x': F(True, "clip the teacher's and self-teacher's x "
                      'predictions in the target', BOOL),
    'tract.learning_rate': F(Same('distillation.learning_rate'),
                             "TRACT students' learning rate", _RATE, FUTURE),
    'tract.learning_rate_anneal_type': F(
        'none', 'decay to 0 within each phase (ml-tract: none)',
        one_of(*ANNEAL_TYPES), FUTURE),
    'tract.ema_decay': F(Same('distillation.ema_decay'), "TRACT students' "
                         'EMA (ml-tract: 1e-3 ** (1 / updates per phase))',
                         fraction(), FUTURE),
    # --- consistency (optional): consistency distillation --------------------
    'consistency.num_updates': F(800_000, 'updates of the consistency student',
                                 _COUNT),
    'consistency.num_scales': F(18, 'N: points of the Karras grid it is '
                                'trained on', integer(2)),
    'consistency.solver': F('heun', "the teacher's ODE step: ddim (Euler) or "
                            'heun', one_of(*choices.CONSISTENCY_SOLVERS)),
    'consistency.distance': F('l2', 'the distance of the two consistency '
                              'outputs', choices.CONSISTENCY_DISTANCE, FUTURE),
    'consistency.target_ema': F(0., "mu: the target network's EMA of the "
                                'student (0: the student, stop_gradient)',
                                fraction(), FUTURE),
    'consistency.sigma_min': F(0.002, 'sigma = exp(-logsnr / 2) where the '
                               'student is the identity', _RATE),
    'consistency.sigma_max': F(80., 'sigma of the noisiest grid point, where '
                               'sampling starts', _RATE),
    'consistency.learning_rate': F(Same('distillation.learning_rate'),
                                   "the student's peak learning rate", _RATE,
                                   FUTURE),
    'consistency.learning_rate_anneal_type': F(
        'none', "the student's decay", one_of(*ANNEAL_TYPES), FUTURE),
    'consistency.ema_decay': F(0.9999, "the EMA the student samples with",
                               fraction(), FUTURE),
    'consistency.eval_steps': F((1, 2, 4), 'the step counts its rows are '
                                'evaluated at', Check('ints', lo=1,
                                                      nonempty=True), FREE),
    # --- eval ------------------------------------------------------------
    'eval.run_after_training': F(True, 'evaluate every stage after training',
                                 BOOL, FREE),
    'eval.metric': F('digits', 'the quality metric', one_of(*METRICS), FREE),
    'eval.num_samples': F(300, 'samples per row (>= 2: a covariance)',
                          integer(2), FREE),
    'eval.batch_size': F(500, 'samples per sampler call', _COUNT, FREE),
    'eval.samplers': F(EVAL_SAMPLERS, "the teacher's samplers "
                       '(`<sampler>[:<grid>]`)', _SAMPLERS, FREE),
    'eval.student_samplers': F(('ddim',), "the students' samplers",
                               choices.STUDENT_SAMPLER_LIST, FREE),
    'eval.teacher_max_steps': F(
        Same('distillation.start_num_steps', 'model.eval_sampling_num_steps'),
        'teacher rows at 1, 2, 4, ... up to this many steps', _COUNT, FREE),
    'eval.teacher_steps': F((), 'teacher rows at exactly these steps (() : by '
                            'teacher_max_steps)', Check('ints', lo=1), FREE),
    'eval.guidance': F((), 'guidance strengths w of a guided run',
                       Check('numbers'), FREE),
    'eval.inception_path': F('', "Inception weights ('': downloaded once)",
                             TEXT, FREE),
    'eval.reference_num_examples': F(0, 'reference images of the Inception '
                                     'statistics (0: the whole train split)',
                                     _STEPS, FREE),
    'eval.grid_samples': F(64, 'images in each sample grid', _COUNT, FREE),
}
