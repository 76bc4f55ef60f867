"""Fields of the official configs that this port does not implement.

The official google-research/diffusion_distillation configs (`config/*.py`)
and code (`model.py`, `dpm.py`, `datasets.py`) know a few fields that have no
counterpart here. A config that sets one of them to anything but the value
meaning what the port does anyway is refused by `config.validate_config`,
naming the field, so that no official setting is silently ignored. The README
("Official config fields") lists every official field and what it does here.
"""

_ANY = object()  # refused whatever its value
_ABSENT = object()

# field -> (the value that changes nothing here, or _ANY; why it is refused)
UNSUPPORTED = {
    'model.name': (
        'unet_iddpm', "the only architecture is the official 'unet_iddpm' "
        '(models/unet.py)'),
    'model.logvar_coeff': (
        0., 'learned variances are not implemented (the official dpm.Model '
        'stores logvar_coeff but never reads it)'),
    'distillation.only_finetune_temb': (
        False, 'the official code never reads it; all parameters train'),
    'dataset.args.extra_image_sizes': (
        (), 'the official data sets add extra_image_<size> arrays to each '
        'batch that no training code reads; not implemented'),
    'dataset.args.image_size': (
        _ANY, "the data set and its resolution are dataset.name here "
        "(e.g. 'imagenet64', 'lsun_church128')"),
    'dataset.args.subset': (
        _ANY, "the LSUN subset is part of dataset.name here (e.g. "
        "'lsun_church128', 'lsun_bedroom128')"),
    'train.retain_checkpoint_every_steps': (
        _ANY, 'not implemented: each stage keeps its last '
        'train.keep_checkpoints checkpoints; copy the ones to retain'),
    'train.learning_rate_anneal_type': (
        _ANY, 'set distillation.learning_rate_anneal_type instead: each '
        'distillation stage anneals over its distillation.steps_per_iter '
        'updates (the official learning_rate_anneal_steps)'),
    'train.learning_rate_anneal_steps': (
        _ANY, 'each distillation stage anneals over distillation.'
        'steps_per_iter updates (set distillation.learning_rate_anneal_type)'),
}


def _same(value, neutral) -> bool:
  if isinstance(neutral, tuple):
    return isinstance(value, (tuple, list)) and tuple(value) == neutral
  return value == neutral


def refused(fields: dict):
  """`(field, reason)` of the first unsupported official field set, or None.

  `fields`: the config as `{'a.b': value}` (`config.flat_fields`).
  """
  for field, (neutral, why) in UNSUPPORTED.items():
    value = fields.get(field, _ABSENT)
    if value is not _ABSENT and (neutral is _ANY or not _same(value, neutral)):
      return field, (f'is set to {value!r}, which this port does not '
                     f'implement: {why}')
  return None
