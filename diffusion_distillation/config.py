"""Validates a config once, before anything runs or touches the workdir.

Every error names the offending field, so that a bad command-line override
fails with one readable line instead of a traceback deep inside a jitted step.
"""

import json

import jax

from diffusion_distillation import data as data_lib
from diffusion_distillation.diffusion import losses
from diffusion_distillation.diffusion import process
from diffusion_distillation.diffusion import sampling
from diffusion_distillation.errors import UserError
from diffusion_distillation.models import unet

DTYPES = ('float32', 'bfloat16')
ANNEAL_TYPES = ('linear', 'none')
# The quality metrics `evaluate` computes (the only list of their names).
METRICS = ('digits', 'inception')


class ConfigError(UserError):
  """A config field holds a value the pipeline cannot run with."""


def _require(ok: bool, field: str, message: str):
  if not ok:
    raise ConfigError(f'config.{field}: {message}')


def _positive_int(config, field: str, allow_zero: bool = False):
  value = _get(config, field)
  lo = 0 if allow_zero else 1
  _require(isinstance(value, int) and not isinstance(value, bool)
           and value >= lo, field,
           f'must be an integer >= {lo}, got {value!r}')
  return value


def _get(config, field: str):
  node = config
  for part in field.split('.'):
    if part not in node:
      raise ConfigError(f'config.{field}: missing')
    node = node[part]
  return node


def _one_of(config, field: str, choices):
  value = _get(config, field)
  _require(value in choices, field,
           f'must be one of {tuple(choices)}, got {value!r}')


def _is_power_of_two(n: int) -> bool:
  return n > 0 and n & (n - 1) == 0


def validate_model(config):
  """Checks the model section (also used by `sample` and `evaluate`)."""
  _one_of(config, 'dataset.name', data_lib.DATASET_NAMES)
  _one_of(config, 'model.mean_type', process.MEAN_TYPES)
  _one_of(config, 'model.mean_loss_weight_type', losses.WEIGHT_TYPES)
  _one_of(config, 'model.args.logsnr_input_type', unet.LOGSNR_INPUT_TYPES)
  _one_of(config, 'model.dtype', DTYPES)
  _one_of(config, 'sampler', sampling.SAMPLERS)
  try:
    process.variance_fraction(_get(config, 'model.logvar_type'))
  except ValueError as e:
    raise ConfigError(f'config.model.logvar_type: {e}') from None
  for name in ('train_logsnr_schedule', 'eval_logsnr_schedule'):
    schedule = _get(config, f'model.{name}')
    _require(schedule.get('name') == 'cosine', f'model.{name}.name',
             f"must be 'cosine', got {schedule.get('name')!r}")
    _require(schedule.logsnr_min < schedule.logsnr_max, f'model.{name}',
             'needs logsnr_min < logsnr_max')
  args = config.model.args
  _require((args.get('num_heads') is None) != (args.get('head_dim') is None),
           'model.args.num_heads',
           'set exactly one of num_heads and head_dim (the other to None)')
  _require(not (config.dataset.name.startswith('lsun') and
                config.dataset.args.class_conditional),
           'dataset.args.class_conditional', 'LSUN has no class labels')
  _require(args.ch % 32 == 0, 'model.args.ch',
           f'must be a multiple of 32 (GroupNorm groups), got {args.ch}')
  _require(0. <= args.dropout < 1., 'model.args.dropout',
           f'must be in [0, 1), got {args.dropout}')
  _positive_int(config, 'model.args.num_res_blocks')
  _positive_int(config, 'model.train_num_steps', allow_zero=True)
  _positive_int(config, 'model.eval_sampling_num_steps')


def validate_config(config, device_count=None, process_count=None):
  """Raises ConfigError naming the first invalid field of a training config."""
  validate_model(config)
  _validate_train(config, device_count or jax.device_count(),
                  process_count or jax.process_count())
  if 'eval' in config:
    _validate_eval(config)
  _validate_distillation(config)


def _validate_train(config, device_count: int, process_count: int):
  batch = _positive_int(config, 'train.batch_size')
  _require(batch % device_count == 0, 'train.batch_size',
           f'global batch {batch} must be divisible by the device count '
           f'{device_count}')
  _require(batch % process_count == 0, 'train.batch_size',
           f'global batch {batch} must be divisible by the process count '
           f'{process_count}')
  _positive_int(config, 'train.num_train_steps', allow_zero=True)
  _positive_int(config, 'train.substeps')
  _positive_int(config, 'train.log_loss_every_steps')
  _positive_int(config, 'train.checkpoint_every_steps')
  _positive_int(config, 'train.keep_checkpoints')
  _positive_int(config, 'train.learning_rate_warmup_steps', allow_zero=True)
  _require(_get(config, 'train.optimizer') == 'adam', 'train.optimizer',
           f"only 'adam' is supported, got {config.train.optimizer!r}")
  _require(config.train.learning_rate > 0, 'train.learning_rate',
           f'must be > 0, got {config.train.learning_rate}')
  _require(0. <= config.train.ema_decay < 1., 'train.ema_decay',
           f'must be in [0, 1), got {config.train.ema_decay}')
  _require(config.train.grad_clip > 0, 'train.grad_clip',
           f'must be > 0, got {config.train.grad_clip}')


def _validate_eval(config):
  _one_of(config, 'eval.metric', METRICS)
  for sampler in config.eval.samplers:
    _require(sampler in sampling.SAMPLERS, 'eval.samplers',
             f'unknown sampler {sampler!r}; known: {sampling.SAMPLERS}')
  _require(isinstance(config.eval.num_samples, int) and
           config.eval.num_samples >= 2, 'eval.num_samples',
           f'must be an integer >= 2 (a covariance needs two samples), got '
           f'{config.eval.num_samples!r}')
  _positive_int(config, 'eval.batch_size')
  _require(not (config.eval.run_after_training and
                config.eval.metric == 'inception' and
                not config.eval.inception_path),
           'eval.inception_path',
           'is empty but eval.run_after_training needs the Inception '
           'weights for the inception metric; set it or set '
           'eval.run_after_training=False')


def _validate_distillation(config):
  distill = config.get('distillation')
  if distill is None:
    _require(config.train.num_train_steps > 0, 'train.num_train_steps',
             'must be > 0 when the config has no distillation section')
    return
  start = _positive_int(config, 'distillation.start_num_steps')
  end = _positive_int(config, 'distillation.end_num_steps')
  _positive_int(config, 'distillation.steps_per_iter')
  _require(start > end, 'distillation.start_num_steps',
           f'must exceed end_num_steps ({end}), got {start}')
  _require(start % end == 0 and _is_power_of_two(start // end),
           'distillation.start_num_steps',
           f'start_num_steps / end_num_steps must be a power of two, got '
           f'{start} / {end}')
  _one_of(config, 'distillation.learning_rate_anneal_type', ANNEAL_TYPES)
  _require(distill.learning_rate > 0, 'distillation.learning_rate',
           f'must be > 0, got {distill.learning_rate}')
  _require(0. <= distill.ema_decay < 1., 'distillation.ema_decay',
           f'must be in [0, 1), got {distill.ema_decay}')
  _require(0. <= distill.dropout < 1., 'distillation.dropout',
           f'must be in [0, 1), got {distill.dropout}')
  _require(config.train.num_train_steps > 0 or distill.teacher_checkpoint_path,
           'distillation.teacher_checkpoint_path',
           'is empty and train.num_train_steps is 0: there is no teacher')


# Fields that fix the shapes of the checkpoints in a workdir (dropout and
# the other training settings may change between runs).
_ARCHITECTURE_FIELDS = ('dataset.name', 'dataset.args.class_conditional',
                        'model.mean_type', 'model.args.ch', 'model.args.emb_ch',
                        'model.args.ch_mult', 'model.args.num_res_blocks',
                        'model.args.attn_resolutions', 'model.args.num_heads',
                        'model.args.head_dim', 'model.args.resblock_resample',
                        'model.args.logsnr_input_type')


def check_compatible(saved: dict, config):
  """Rejects resuming a workdir with a config of another architecture."""
  for field in _ARCHITECTURE_FIELDS:
    old, new = saved, config.to_dict()
    for part in field.split('.'):
      old, new = (old or {}).get(part), (new or {}).get(part)
    old, new = json.loads(json.dumps(old)), json.loads(json.dumps(new))
    if old != new:
      raise ConfigError(
          f'config.{field} is {new!r} but the workdir was created with '
          f'{old!r}; use a new --workdir')
