"""What a rerun on an existing workdir may change: each field's rerun rule.

A workdir keeps the config it was created with (`config.json`). A rerun's
config may differ in fields whose rule (`fields.py`) is FREE (logging,
checkpoints, evaluation), FUTURE (training settings: they apply to the updates
from now on) or EXTENDS (more base updates); a REFUSED field (architecture,
parameterization, schedules, data set, seed, stage plan) would change what
finished stages mean.
"""

import dataclasses
import json

from etils import epath

from diffusion_distillation import paths
from diffusion_distillation.config import defaults
from diffusion_distillation.config import fields as fields_lib
from diffusion_distillation.config import schema
from diffusion_distillation.config.schema import ConfigError

BASE_STEPS = 'train.num_train_steps'


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


@dataclasses.dataclass
class Rerun:
  """What a rerun's config changes, once accepted by `check_rerun`."""
  notices: list  # one line per accepted change that alters future training
  base_extended: bool  # more base updates: students of the old teacher are stale


def json_fields(config) -> dict:
  """The complete config's fields (`{'a.b': value}`) with JSON values, as
  config.json holds them."""
  flat = defaults.flat_fields(defaults.complete(config).to_dict())
  return {field: json.loads(json.dumps(value)) for field, value in flat.items()}


def _same_place(field: str, before, after) -> bool:
  """A path saved relative by an earlier version, rerun from the directory
  it was relative to: the same place, now written absolute."""
  return (field in fields_lib.PATH_FIELDS and isinstance(before, str) and
          bool(before) and paths.is_local(before) and
          paths.absolute_path(before) == after)


def check_rerun(saved: dict, config) -> Rerun:
  """Decides, field by field, whether `config` may continue a workdir.

  `saved` is the workdir's config.json; fields it lacks (written before they
  existed) had their defaults. Raises one ConfigError naming every field
  that would change the meaning of finished work.
  """
  old, new = json_fields(saved), json_fields(config)
  rerun, refused = Rerun([], False), []
  for field in sorted(set(old) | set(new)):
    before, after = old.get(field), new.get(field)
    rule = fields_lib.FIELDS[field].rerun
    if before == after or rule == schema.FREE or _same_place(field, before,
                                                              after):
      continue
    if rule == schema.FUTURE:
      rerun.notices.append(f'config.{field} {before!r} -> {after!r}: applies '
                           'to the updates from now on')
    elif (rule == schema.EXTENDS and isinstance(before, int) and
          isinstance(after, int) and 0 < before < after):
      rerun.base_extended = True
      rerun.notices.append(
          f'config.{field} {before} -> {after}: the teacher trains on, and '
          'the students distilled from the old teacher are set aside and '
          'distilled again')
    elif rule == schema.EXTENDS:
      refused.append(f'config.{field} is {after!r} but the workdir was '
                     f'created with {before!r} (a rerun may only raise it, '
                     'to train the teacher on)')
    else:
      refused.append(f'config.{field} is {after!r} but the workdir was '
                     f'created with {before!r}')
  if refused:
    raise ConfigError(f'{"; ".join(refused)}; a rerun cannot change '
                      f'{"it" if len(refused) == 1 else "them"} (use a new '
                      '--workdir)')
  return rerun
