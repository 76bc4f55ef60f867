"""Validates a config once, before anything runs or touches the workdir.

Every error names the offending field, so that a bad command-line override
fails with one readable line instead of a traceback deep inside a jitted step.
"""

import dataclasses
import json
import math

from etils import epath
import jax

from diffusion_distillation import data as data_lib
from diffusion_distillation import official_fields
from diffusion_distillation.diffusion import losses
from diffusion_distillation.diffusion import process
from diffusion_distillation.diffusion import sampling
from diffusion_distillation.errors import UserError
from diffusion_distillation.models import unet

DTYPES = ('float32', 'bfloat16')
OPTIMIZERS = ('adam', 'momentum', 'nesterov')  # the official optimizers
AVG_TYPES = ('', 'ema', 'aa')  # '': the official avg_type=None
ANNEAL_TYPES = ('linear', 'none')
# The quality metrics `evaluate` computes (the only list of their names).
METRICS = ('digits', 'inception', 'bpd')


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


def _number(config, field: str):
  """A finite real number (inf and nan are refused: they poison training)."""
  value = _get(config, field)
  _require(isinstance(value, (int, float)) and not isinstance(value, bool)
           and math.isfinite(value), field,
           f'must be a finite number, got {value!r}')
  return value


def _positive_number(config, field: str, allow_zero: bool = False):
  value = _number(config, field)
  _require(value > 0 or (allow_zero and value == 0), field,
           f'must be {">=" if allow_zero else ">"} 0, got {value!r}')
  return value


def _fraction(config, field: str):
  """A finite number in [0, 1) (decay rates, dropout, Adam's betas)."""
  value = _number(config, field)
  _require(0. <= value < 1., field, f'must be in [0, 1), got {value!r}')
  return value


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
  _validate_guidance(config)


def _validate_guidance(config):
  """Classifier-free guidance: label dropout, and guided distillation.

  `model.cond_drop_prob` > 0 trains a guided teacher; a `guidance` section
  (w_min, w_max, num_updates) adds stage one of guided distillation and
  makes the students w-conditioned (see pipeline/stages.py).
  """
  drop = config.model.get('cond_drop_prob', 0.)
  if drop:
    _fraction(config, 'model.cond_drop_prob')
    _require(config.dataset.args.get('class_conditional', False),
             'model.cond_drop_prob', 'label dropout (classifier-free '
             'guidance) needs dataset.args.class_conditional=True')
  values = (config.get('eval') or {}).get('guidance') or ()
  for w in values:
    _require(isinstance(w, (int, float)) and not isinstance(w, bool) and
             math.isfinite(w), 'eval.guidance',
             f'must hold finite guidance strengths, got {w!r}')
  if 'guidance' not in config:
    _require(not values or drop > 0, 'eval.guidance',
             'needs a guided model (model.cond_drop_prob > 0)')
    return
  _require(drop > 0, 'guidance', 'guided distillation needs a guided '
           'teacher: set model.cond_drop_prob > 0 (label dropout)')
  _require('distillation' in config, 'guidance',
           'guided distillation needs a distillation section')
  lo = _number(config, 'guidance.w_min')
  hi = _positive_number(config, 'guidance.w_max')
  _require(0 <= lo < hi, 'guidance.w_min',
           f'must be in [0, guidance.w_max = {hi}), got {lo}')
  _positive_int(config, 'guidance.num_updates')
  outside = [w for w in values if not lo <= w <= hi]
  _require(not outside, 'eval.guidance',
           f'{outside} outside the trained range [{lo}, {hi}] '
           '(guidance.w_min, guidance.w_max)')


def validate_config(config, device_count=None, process_count=None):
  """Raises ConfigError naming the first invalid field of a training config."""
  unsupported = official_fields.refused(flat_fields(config))
  if unsupported:
    raise ConfigError('config.{}: {}'.format(*unsupported))
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
  _one_of(config, 'train.optimizer', OPTIMIZERS)
  _positive_number(config, 'train.learning_rate')
  _positive_number(config, 'train.grad_clip')
  _positive_number(config, 'train.weight_decay', allow_zero=True)
  for field in ('adam_beta1', 'adam_beta2'):
    _fraction(config, f'train.{field}')
  _validate_official_training(config)
  every_secs = _get(config, 'train.checkpoint_every_secs')
  _require(isinstance(every_secs, (int, float)) and every_secs > 0,
           'train.checkpoint_every_secs',
           f'must be > 0 (inf: never by time), got {every_secs!r}')


def _validate_official_training(config):
  """The official optimizer, averaging, clipping and evaluation options.

  As the official `step_fn`, a set `train.ema_decay` takes precedence over
  `train.avg_type`; both set is refused, since one would be ignored.
  """
  train = config.train
  if train.get('optimizer_beta') is not None:
    _fraction(config, 'train.optimizer_beta')
  if train.get('eval_every_steps') is not None:
    _positive_int(config, 'train.eval_every_steps', allow_zero=True)
  _require(isinstance(train.get('grad_clip_per_device', False), bool),
           'train.grad_clip_per_device',
           f'must be true or false, got {train.get("grad_clip_per_device")!r}')
  avg_type = train.get('avg_type') or ''
  _require(avg_type in AVG_TYPES, 'train.avg_type',
           f'must be one of {AVG_TYPES}, got {avg_type!r}')
  if avg_type:
    _positive_int(config, 'train.avg_steps')
  if _get(config, 'train.ema_decay') is None:
    return
  _fraction(config, 'train.ema_decay')
  _require(not avg_type, 'train.avg_type',
           f'{avg_type!r} has no effect while train.ema_decay is set (it '
           'takes precedence, as in the official code); set '
           'train.ema_decay=None in the config file to average by avg_type')


def _validate_eval(config):
  _one_of(config, 'eval.metric', METRICS)
  for field in ('samplers', 'student_samplers'):
    for sampler in config.eval.get(field, ()):
      _require(sampler in sampling.SAMPLERS, f'eval.{field}',
               f'unknown sampler {sampler!r}; known: {sampling.SAMPLERS}')
  _require(isinstance(config.eval.num_samples, int) and
           config.eval.num_samples >= 2, 'eval.num_samples',
           f'must be an integer >= 2 (a covariance needs two samples), got '
           f'{config.eval.num_samples!r}')
  _positive_int(config, 'eval.batch_size')


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
  _positive_number(config, 'distillation.learning_rate')
  _positive_number(config, 'distillation.weight_decay', allow_zero=True)
  _fraction(config, 'distillation.ema_decay')
  _fraction(config, 'distillation.dropout')
  _require(config.train.num_train_steps > 0 or distill.teacher_checkpoint_path,
           'distillation.teacher_checkpoint_path',
           'is empty and train.num_train_steps is 0: there is no teacher')


def read_saved_config(path) -> dict:
  """A workdir's config.json; a ConfigError naming the file if unreadable.

  A file cut short (a full disk, a copy interrupted) or edited by hand would
  otherwise end in a JSONDecodeError traceback.
  """
  path = epath.Path(path)
  advice = 'restore it from a backup or use a new --workdir'
  try:
    saved = json.loads(path.read_text())
  except OSError as e:
    raise ConfigError(f'{path}: cannot read it ({e.strerror or e}); '
                      f'{advice}') from None
  except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
    reason = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
    where = (f' at line {e.lineno} column {e.colno}'
             if isinstance(e, json.JSONDecodeError) else '')
    raise ConfigError(f'{path}: not valid JSON ({reason}{where}); '
                      f'{advice}') from None
  if not isinstance(saved, dict):
    raise ConfigError(f'{path}: holds a JSON {type(saved).__name__}, not a '
                      f'config; {advice}')
  return saved


# How a rerun on an existing workdir may change the config it was created
# with. Unlisted fields (architecture, parameterization, schedules, data set,
# seed, stage plan) are refused: they would change what finished stages mean.
_SAFE_FIELDS = ('train.log_loss_every_steps', 'train.checkpoint_every_steps',
                'train.checkpoint_every_secs', 'train.keep_checkpoints',
                'train.substeps', 'train.eval_every_steps', 'eval',
                'dataset.data_dir')
# Training settings: they apply to the updates from now on.
_FUTURE_FIELDS = ('train.learning_rate', 'train.learning_rate_warmup_steps',
                  'train.grad_clip', 'train.enable_update_skip',
                  'train.grad_clip_per_device', 'train.optimizer',
                  'train.optimizer_beta', 'train.avg_type', 'train.avg_steps',
                  'train.adam_beta1', 'train.adam_beta2',
                  'train.weight_decay', 'train.ema_decay', 'train.batch_size',
                  'distillation.learning_rate',
                  'distillation.learning_rate_anneal_type',
                  'distillation.weight_decay', 'distillation.ema_decay',
                  'distillation.dropout', 'distillation.end_num_steps',
                  'model.args.dropout', 'model.dtype',
                  'model.eval_sampling_num_steps', 'dataset.args.randflip',
                  'sampler')
BASE_STEPS = 'train.num_train_steps'
# Fields added after workdirs were made: absent from an old config.json, they
# had these values.
_ADDED_FIELDS = {'train.grad_clip_per_device': False,
                 'train.optimizer_beta': 0.9, 'train.avg_type': '',
                 'train.avg_steps': 0, 'train.eval_every_steps': 0}


@dataclasses.dataclass
class Rerun:
  """What a rerun's config changes, once accepted by `check_rerun`."""
  notices: list  # one line per accepted change that alters future training
  base_extended: bool  # more base updates: students of the old teacher are stale


def flat_fields(tree, prefix: str = '') -> dict:
  """A (nested) config or dict as `{'a.b': value}`, values as they are."""
  flat = {}
  for key, value in tree.items():
    if hasattr(value, 'items'):
      flat.update(flat_fields(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def _flatten(tree) -> dict:
  """`flat_fields` with JSON values, as config.json holds them."""
  return {field: json.loads(json.dumps(value))
          for field, value in flat_fields(tree).items()}


def _matches(field: str, names) -> bool:
  return any(field == n or field.startswith(n + '.') for n in names)


def check_rerun(saved: dict, config) -> Rerun:
  """Decides, field by field, whether `config` may continue a workdir.

  Raises ConfigError naming the first field that would change the meaning of
  finished work; `saved` is the workdir's config.json.
  """
  old, new = _flatten(saved), _flatten(config.to_dict())
  rerun = Rerun([], False)
  for field in sorted(set(old) | set(new)):
    before, after = old.get(field, _ADDED_FIELDS.get(field)), new.get(field)
    if before == after or _matches(field, _SAFE_FIELDS):
      continue
    if _matches(field, _FUTURE_FIELDS):
      rerun.notices.append(f'config.{field} {before!r} -> {after!r}: applies '
                           'to the updates from now on')
    elif (field == BASE_STEPS and isinstance(before, int) and
          isinstance(after, int) and 0 < before < after):
      rerun.base_extended = True
      rerun.notices.append(
          f'config.{field} {before} -> {after}: the teacher trains on, and '
          'the students distilled from the old teacher are set aside and '
          'distilled again')
    else:
      raise ConfigError(
          f'config.{field} is {after!r} but the workdir was created with '
          f'{before!r}; a rerun cannot change it (use a new --workdir)')
  return rerun
