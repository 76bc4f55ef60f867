"""Validates a config once, before anything runs or touches the workdir.

First every field against its declaration (type, range, choices), then what
relates fields to each other. The error names every offending field, so that
a bad command-line override fails with one readable line instead of a
traceback deep inside a jitted step.
"""

import math

import jax

from diffusion_distillation.config import choices
from diffusion_distillation.config import defaults
from diffusion_distillation.config import fields as fields_lib
from diffusion_distillation.config.schema import ConfigError

FIELDS = fields_lib.FIELDS
# The sections `validate_model` checks: what sampling a model needs.
MODEL_SECTIONS = ('seed', 'sampler', 'dataset', 'model', 'guidance',
                  'consistency', 'eval')


def _raise_if(problems: list):
  if problems:
    raise ConfigError('; '.join(problems))


def field_problems(config, sections=None) -> list:
  """'config.<field>: <problem>' for each declared field `config` sets wrong."""
  problems = []
  for field, value in defaults.flat_fields(config).items():
    if sections is None or defaults.section_of(field) in sections:
      wrong = FIELDS[field].problem(value)
      if wrong:
        problems.append(f'config.{field}: {wrong}')
  return problems


class _Problems(list):
  """'config.<field>: <problem>' lines, gathered to be raised together."""

  def require(self, ok: bool, field: str, message: str):
    if not ok:
      self.append(f'config.{field}: {message}')


def _model_relations(config) -> list:
  problems = _Problems()
  require = problems.require
  model, args = config.model, config.model.args
  try:
    choices.variance_fraction(model.logvar_type)
  except ValueError as e:
    problems.append(f'config.model.logvar_type: {e}')
  for name in ('train_logsnr_schedule', 'eval_logsnr_schedule'):
    schedule = model[name]
    require(schedule.logsnr_min < schedule.logsnr_max, f'model.{name}',
            'needs logsnr_min < logsnr_max')
  require((args.num_heads is None) != (args.head_dim is None),
          'model.args.num_heads',
          'set exactly one of num_heads and head_dim (the other to None)')
  require(not (config.dataset.name.startswith('lsun') and
               config.dataset.args.class_conditional),
          'dataset.args.class_conditional', 'LSUN has no class labels')
  _dataset_relations(config.dataset, require)
  if config.model.architecture == 'diffusers':
    _imported_relations(config, require)
  else:
    _levels_relation(config, require)
  _guidance_relations(config, require)
  _consistency_relations(config, require)
  return problems


def _consistency_relations(config, require):
  """Consistency distillation: its section goes with its method, alone
  (no guided distillation), and its noise levels lie inside the teacher's
  logSNR range (logsnr = -2 log sigma)."""
  method = (config.distillation.method if 'distillation' in config else
            None)
  present = 'consistency' in config
  require(present or method != 'consistency', 'distillation.method',
          "'consistency' needs a consistency section (config_lib."
          "add_section(config, 'consistency'))")
  if not present:
    return
  require(method == 'consistency', 'consistency',
          "is read only with distillation.method = 'consistency', got "
          f'{method!r}')
  require('guidance' not in config, 'guidance',
          'guided distillation is not implemented for consistency '
          'distillation: remove the guidance section')
  lo, hi = config.consistency.sigma_min, config.consistency.sigma_max
  require(lo < hi, 'consistency.sigma_min',
          f'must be below consistency.sigma_max = {hi}, got {lo}')
  schedule = config.model.train_logsnr_schedule
  logsnr = lambda sigma: -2. * math.log(sigma)
  require(logsnr(hi) >= schedule.logsnr_min, 'consistency.sigma_max',
          f'{hi} is logSNR {logsnr(hi):.3g}, below the teacher\'s '
          f'model.train_logsnr_schedule.logsnr_min = {schedule.logsnr_min}')
  require(logsnr(lo) <= schedule.logsnr_max, 'consistency.sigma_min',
          f'{lo} is logSNR {logsnr(lo):.3g}, above the teacher\'s '
          f'model.train_logsnr_schedule.logsnr_max = {schedule.logsnr_max}')


# The fields of one data set kind, refused with another (they would be
# silently ignored).
_DATASET_OWN = {
    'tfds': ('tfds_name', 'image_key', 'label_key', 'train_split',
             'eval_split'),
    'image_folder': ('path', 'labels_from_subfolders', 'skip_unreadable',
                     'eval_fraction'),
}


def _dataset_relations(dataset, require):
  name, sized = dataset.name, dataset.name in choices.SIZED_DATASETS
  require(not sized or dataset.image_size > 0, 'dataset.image_size',
          f"must be set (> 0) for dataset.name='{name}'")
  require(sized or dataset.image_size == 0, 'dataset.image_size',
          f"{name}'s resolution is fixed; dataset.image_size is for tfds and "
          'image_folder data sets')
  required = {'tfds': 'tfds_name', 'image_folder': 'path'}.get(name)
  require(not required or dataset[required], f'dataset.{required}',
          f"must be set for dataset.name='{name}'")
  for kind, own in _DATASET_OWN.items():
    for key in own if kind != name else ():
      default = fields_lib.FIELDS[f'dataset.{key}'].default
      require(dataset[key] == default, f'dataset.{key}',
              f"is read only with dataset.name='{kind}' (not '{name}')")
  require(not (name == 'image_folder' and dataset.args.class_conditional and
               not dataset.labels_from_subfolders),
          'dataset.args.class_conditional', 'an image folder has class '
          'labels only with dataset.labels_from_subfolders=true (one '
          'sub-folder per class)')


def _levels_relation(config, require):
  """The image size halves at each resolution level but the last, and
  attention heads of head_dim channels split the channels of every layer
  that attends (the middle block's, and those at attn_resolutions)."""
  args, dataset = config.model.args, config.dataset
  size = dataset.image_size or choices.IMAGE_SIZES.get(dataset.name, 32)
  mults = args.ch_mult or choices.shape_for_size(size)[0]
  if args.head_dim:
    wide = [c for c in choices.attention_channels(
        args.ch, mults, args.attn_resolutions, size) if c % args.head_dim]
    require(not wide, 'model.args.head_dim',
            f'{args.head_dim} must divide the channel counts {wide} '
            '(model.args.ch x ch_mult) of the attention layers (the middle '
            "block's and those at model.args.attn_resolutions)")
  size = dataset.image_size
  if not size:
    return  # the paper data sets: checked by their configs' tests
  levels = len(mults)
  factor = 2**(levels - 1)
  require(size % factor == 0, 'dataset.image_size',
          f'{size} must be divisible by {factor} for the {levels} resolution '
          'levels of model.args.ch_mult (set another size or ch_mult)')


def _imported_relations(config, require):
  """An imported diffusers teacher (docs/diffusers.md): its folder is the
  teacher's path, and it is neither guided nor a two-output network."""
  require('distillation' in config and
          config.distillation.teacher_checkpoint_path, 'model.architecture',
          "'diffusers' needs the diffusers folder in "
          'distillation.teacher_checkpoint_path')
  require(config.model.cond_drop_prob == 0, 'model.cond_drop_prob',
          "must be 0 with model.architecture='diffusers' (no guided import)")
  require(config.model.mean_type != 'both', 'model.mean_type',
          "'both' is not an imported network's output: use 'v', 'x' or 'eps'")


def _guidance_relations(config, require):
  """Classifier-free guidance: label dropout, and guided distillation.

  `model.cond_drop_prob` > 0 trains a guided teacher; a `guidance` section
  adds stage one of guided distillation and makes the students
  w-conditioned (see pipeline/stages.py).
  """
  guided_teacher = config.model.cond_drop_prob > 0
  require(not guided_teacher or config.dataset.args.class_conditional,
          'model.cond_drop_prob', 'label dropout (classifier-free guidance) '
          'needs dataset.args.class_conditional=True')
  values = config.eval.guidance
  if 'guidance' not in config:
    require(not values or guided_teacher, 'eval.guidance',
            'needs a guided model (model.cond_drop_prob > 0)')
    return
  require(guided_teacher, 'guidance', 'guided distillation needs a guided '
          'teacher: set model.cond_drop_prob > 0 (label dropout)')
  require('distillation' in config, 'guidance',
          'guided distillation needs a distillation section')
  lo, hi = config.guidance.w_min, config.guidance.w_max
  require(lo < hi, 'guidance.w_min',
          f'must be below guidance.w_max = {hi}, got {lo}')
  w_const = config.guidance.w_const
  require(lo <= w_const <= hi, 'guidance.w_const',
          f'{w_const} is outside the trained range [{lo}, {hi}]')
  outside = [w for w in values if not lo <= w <= hi]
  require(not outside, 'eval.guidance',
          f'{outside} outside the trained range [{lo}, {hi}] '
          '(guidance.w_min, guidance.w_max)')


def validate_model(config):
  """Checks what sampling needs (also used by `sample` and `evaluate`)."""
  _raise_if(field_problems(config, MODEL_SECTIONS))
  _raise_if(_model_relations(config))


def _training_relations(config, device_count: int, process_count: int):
  problems = _Problems()
  require = problems.require
  train = config.train
  batch = train.batch_size
  require(batch % device_count == 0, 'train.batch_size',
          f'global batch {batch} must be divisible by the device count '
          f'{device_count}')
  require(batch % process_count == 0, 'train.batch_size',
          f'global batch {batch} must be divisible by the process count '
          f'{process_count}')
  per_device, parts = batch // device_count, train.num_microbatches
  require(batch % device_count or per_device % parts == 0,
          'train.num_microbatches',
          f'{parts} must divide the batch per device, {per_device} '
          f'(train.batch_size {batch} / {device_count} devices)')
  # As the official `step_fn`, a set ema_decay takes precedence over
  # avg_type; both set is refused, since one would be ignored.
  require(not (train.ema_decay is not None and train.avg_type),
          'train.avg_type',
          f'{train.avg_type!r} has no effect while train.ema_decay is set (it '
          'takes precedence, as in the official code); set '
          'train.ema_decay=None in the config file to average by avg_type')
  require(not train.avg_type or train.avg_steps >= 1, 'train.avg_steps',
          f'must be >= 1 for avg_type {train.avg_type!r}, got '
          f'{train.avg_steps}')
  if 'distillation' not in config:
    require(train.num_train_steps > 0, 'train.num_train_steps',
            'must be > 0 when the config has no distillation section')
    return problems
  distill = config.distillation
  start, end = distill.start_num_steps, distill.end_num_steps
  stage_one = 'guidance' in config and config.guidance.num_updates > 0
  if _tract_relations(config, require):
    end = start // 2  # TRACT's phases replace the halvings to end_num_steps
  require(start > end or (stage_one and start == end),
          'distillation.start_num_steps',
          f'must exceed end_num_steps ({end}), got {start}' + (
              ' (or equal it: stage one of guided distillation only)'
              if stage_one else ''))
  ratio = start // end
  require(start % end == 0 and ratio & (ratio - 1) == 0,
          'distillation.start_num_steps',
          f'start_num_steps / end_num_steps must be a power of two, got '
          f'{start} / {end}')
  require(train.num_train_steps > 0 or distill.teacher_checkpoint_path,
          'distillation.teacher_checkpoint_path',
          'is empty and train.num_train_steps is 0: there is no teacher')
  require(not ('guidance' in config and config.guidance.num_updates == 0)
          or distill.teacher_checkpoint_path, 'guidance.num_updates',
          '0 (no stage one) needs a w-conditioned teacher in '
          'distillation.teacher_checkpoint_path, e.g. a stage-one '
          "workdir's checkpoints/guided_<N>")
  return problems


def _tract_relations(config, require) -> bool:
  """Whether the students are TRACT's, which needs a `tract` section (and
  the section the method); its phases must each divide the steps before."""
  tract = config.distillation.method == 'tract'
  require(tract == ('tract' in config), 'distillation.method',
          f"{config.distillation.method!r} with{'out' if tract else ''} a "
          "tract section: TRACT needs one, the other methods read none")
  if not (tract and 'tract' in config):
    return tract
  require('guidance' not in config, 'guidance',
          'guided distillation has no TRACT phases (progressive only)')
  teacher = config.distillation.start_num_steps
  for phase, steps in enumerate(config.tract.phases):
    require(steps < teacher and teacher % steps == 0, 'tract.phases',
            f'phase {phase}: {steps} steps must be fewer than and divide its '
            f"teacher's {teacher} (the previous phase's, the first "
            'distillation.start_num_steps)')
    teacher = steps
  return tract


def validate_config(config, device_count=None, process_count=None):
  """Raises one ConfigError naming every invalid field of a training config.

  `config` is complete (`defaults.complete`).
  """
  _raise_if(field_problems(config))
  _raise_if(_model_relations(config) + _training_relations(
      config, device_count or jax.device_count(),
      process_count or jax.process_count()))
