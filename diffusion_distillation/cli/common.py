"""What every command-line tool shares: path flags, config flags, quiet logs."""

import logging as std_logging
import os
import re
import reprlib
import sys
import traceback

from absl import flags
import ml_collections
from ml_collections import config_flags

from diffusion_distillation.errors import UserError
from diffusion_distillation.paths import absolute_path
from diffusion_distillation.paths import is_config_name

class _PathParser(flags.ArgumentParser):

  def parse(self, argument):
    return absolute_path(argument)

  def flag_type(self):
    return 'path'


def DEFINE_path(name, default, help_text, **kwargs):  # pylint: disable=invalid-name
  """A string flag whose local value is made absolute (see `absolute_path`)."""
  return flags.DEFINE(_PathParser(), name, default, help_text,
                      serializer=flags.ArgumentSerializer(), **kwargs)


def DEFINE_choice(name, default, check, help_text):  # pylint: disable=invalid-name
  """A string flag checked by `check` (config/choices.py), the same check
  and words as the config field and the API argument of its name."""

  def checker(value):
    problem = check.problem(value)
    if problem:
      raise flags.ValidationError(problem)
    return True

  flag = flags.DEFINE_string(name, default, help_text)
  flags.register_validator(name, checker)
  return flag


def complete_config(config):
  """`--config` (with its overrides) complete, every field the schema
  declares, and its local path fields made absolute."""
  # Here, not at the top: it loads JAX and the model, which `--help` and a
  # mistyped flag should not wait for.
  from diffusion_distillation import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.complete(config)
  for field, value in config_lib.flat_fields(config).items():
    declared = config_lib.FIELDS.get(field)
    if field in config_lib.PATH_FIELDS:
      _set(config, field, absolute_path(value))
    elif declared and declared.check and declared.check.kind == 'choices':
      _set(config, field, _comma_list(value))
  return config


def _comma_list(value):
  """`--config.eval.samplers=ddim,ancestral` as ('ddim', 'ancestral'), as
  `ch_mult=1,2` is (1, 2): ml_collections reads a list of words given with
  commas as one word."""
  items = value.split(',') if isinstance(value, str) else value
  if not isinstance(items, (list, tuple)):
    return value
  return tuple(part.strip() for item in items
               for part in (item.split(',') if isinstance(item, str)
                            else [item]))


def _set(config, field: str, value):
  *sections, name = field.split('.')
  for section in sections:
    config = config[section]
  config[name] = value


class _DropInfo(std_logging.Filter):
  """Drops INFO records of libraries whose INFO lines only bury ours."""

  _QUIET = (f'{os.sep}orbax{os.sep}', f'{os.sep}jax{os.sep}_src{os.sep}')

  def filter(self, record):
    if not any(part in record.pathname for part in self._QUIET):
      return True
    return record.levelno > std_logging.INFO


def quiet_library_logs():
  """Our progress stays visible; orbax's and JAX's INFO chatter does not.

  JAX logs `Unable to initialize backend 'tpu'` at INFO on every machine
  without a TPU, orbax logs a dozen lines per checkpoint, and a cloud
  store's client a traceback per retry.
  """
  for handler in std_logging.getLogger().handlers:
    handler.addFilter(_DropInfo())
  # A cloud store's client logs a traceback per retry; ours is one line.
  for name in ('gcsfs', 'fsspec', 'aiohttp', 'google.auth'):
    std_logging.getLogger(name).setLevel(std_logging.CRITICAL)


def DEFINE_config(required: bool = True):  # pylint: disable=invalid-name
  """`--config=FILE.py` (or a config's name) with `--config.a.b=value`
  overrides (ml_collections)."""
  holder = config_flags.DEFINE_config_file(
      'config', None, 'A config file (configs/*.py) or the name of an '
      'installed config (digits, cifar10_distill, ...).', lock_config=True)
  if required:
    flags.mark_flag_as_required('config')
  return holder


def _missing_field(error):
  """(field, hint) from the AttributeError / KeyError of an unknown override.

  ml_collections raises `AttributeError(KeyError("'name'\\nDid you mean ...
  instead of ...?"))`: the field name, then a suggestion on its own line.
  """
  inner = error.args[0] if error.args else error
  if isinstance(inner, BaseException):
    inner = inner.args[0] if inner.args else ''
  first, _, rest = str(inner).partition('\n')
  match = re.search(r'Did you mean "([^"]+)"', rest)
  return (first.strip().strip('\'"'),
          f'; did you mean {match.group(1)!r}?' if match else '')


def _unknown_override(argv, error) -> str:
  """Names the `--config.<path>` override whose field the config lacks."""
  missing, hint = _missing_field(error)
  overrides = [arg.split('=', 1)[0] for arg in argv[1:]
               if re.match(r'--?(no)?config\.', arg)]
  named = [o for o in overrides if missing in re.split(r'[.\[\]]', o)]
  if named:
    from diffusion_distillation.config import fields  # pylint: disable=g-import-not-at-top
    declared = fields.FIELDS.get(named[0].split('config.', 1)[1])
    if declared is not None and not declared.filled:  # refused by name
      return (f'{named[0]}: an official field this port does not '
              f'implement: {declared.doc}')
    return f'{named[0]}: the config has no field {missing!r}{hint}'
  indexed = [o for o in overrides if '[' in o]
  if len(indexed) == 1:
    return f'{indexed[0]}: {missing}'
  return f'{" ".join(overrides) or "--config"}: {missing}{hint}'


def _config_argument(argv):
  """The value of `--config` in `argv` (the file, maybe with `:args`)."""
  for i, arg in enumerate(argv[1:], 1):
    match = re.fullmatch(r'--?config(=(.*))?', arg, re.DOTALL)
    if match:
      if match.group(1):
        return match.group(2)
      return argv[i + 1] if i + 1 < len(argv) else None
  return None


def _config_file_error(argv, error):
  """One line for an error in loading the `--config` file; None: not that.

  ml_collections lets a syntax error, a missing `get_config` and any
  exception of the file's own code escape from flag parsing as they are
  (a TypeError / ValueError comes wrapped, with its traceback as text).
  """
  path = _config_argument(argv)
  if not path:
    return None
  file = os.path.abspath(path.split(':', 1)[0])

  def in_file(name):
    return bool(name) and os.path.abspath(name) == file

  text = str(error)
  if isinstance(error, SyntaxError) and in_file(error.filename):
    return f'--config={path}: syntax error at line {error.lineno}: {error.msg}'
  if isinstance(error, AttributeError) and "'get_config'" in text:
    return f'--config={path}: the file defines no get_config() function'
  lines = [f for f in traceback.extract_tb(error.__traceback__)
           if in_file(f.filename)]
  if lines:
    first = text.strip().splitlines()[0] if text.strip() else ''
    return (f'--config={path}: {type(error).__name__} at line '
            f'{lines[-1].lineno}: {first}')
  if 'Error whilst parsing config file' in text:
    at = re.findall(rf'File "{re.escape(file)}", line (\d+)', text)
    name, _, message = text.strip().splitlines()[-1].strip().partition(': ')
    return (f'--config={path}: {name}{f" at line {at[-1]}" if at else ""}: '
            f'{message}')
  return None


def _config_names_as_files(argv):
  """`--config=NAME[:args]` as the installed config file's path."""
  value = _config_argument(argv)
  name = value.split(':', 1)[0] if value else ''
  if not name or not is_config_name(name):
    return argv
  from diffusion_distillation.api import configs  # pylint: disable=g-import-not-at-top
  try:
    path = configs.config_file(name) + value[len(name):]
  except UserError as e:
    fail(f'--config={value}: {str(e).partition(": ")[2]}')
  out = list(argv)
  for i, arg in enumerate(argv[1:], 1):
    if re.fullmatch(r'--?config=.*', arg, re.DOTALL):
      out[i] = f'--config={path}'
    elif re.fullmatch(r'--?config', arg):
      out[i + 1] = path
  return out


def parse_flags_with_config(argv):
  """absl's flag parsing, plus one-line errors where ml_collections has none.

  An override of a field the config does not have raises a bare
  AttributeError / KeyError (not an absl flags error), a config file that
  does not compile or run raises its own error, and a config file that
  cannot be found only fails when the config is first read; all would
  otherwise end in a traceback.
  """
  argv = _config_names_as_files(argv)
  try:
    remaining = flags.FLAGS(argv)
  except flags.Error as e:
    fail(_config_file_error(argv, e) or str(e))
  except Exception as e:  # pylint: disable=broad-except
    message = _config_file_error(argv, e)
    if message is None and isinstance(e, (AttributeError, KeyError,
                                          IndexError)):
      message = _unknown_override(argv, e)
    if message is None:
      raise
    fail(message)
  if flags.FLAGS['config'].present:
    path = config_flags.get_config_filename(flags.FLAGS['config'])
    try:
      config = flags.FLAGS.config  # loads the file (ml_collections defers it)
    except OSError as e:
      reason = str(e.__cause__ or e).strip().splitlines()[-1].strip()
      fail(f'--config={path}: cannot load the config file: {reason}')
    if not isinstance(config, ml_collections.ConfigDict):
      fail(f'--config={path}: get_config() returned '
           f'{reprlib.repr(config)} ({type(config).__name__}), not an '
           'ml_collections.ConfigDict; start from a config of configs/, '
           'e.g. configs/digits.py, or from '
           'diffusion_distillation.config.default_config()')
  return remaining


def our_flag_names() -> list[str]:
  """The flags this package defines (not absl's own), longest first."""
  names = [flag.name for module, defined in
           flags.FLAGS.flags_by_module_dict().items()
           if module.startswith('diffusion_distillation') for flag in defined]
  return sorted(set(names), key=len, reverse=True)


def in_flag_words(message: str, names) -> str:
  """An API message in command-line words: `name=value`, `pass name` and
  `leave out name` of the command's flags `names` become `--name=value`
  (quotes dropped), `pass --name` and `leave out --name`."""
  for name in names:
    message = re.sub(rf"(?<![\w.-]){name}=(?:'([^']*)'|([^\s,;:)]+))",
                     lambda m, n=name: f'--{n}={m.group(m.lastindex)}',
                     message)
    message = re.sub(rf'\b(pass|leave out) {name}\b(?![=.])',
                     rf'\1 --{name}', message)
  return message


def fail(message: str, status: int = 2):
  """Ends the program with `error: <message>` and `status` (2: bad input)."""
  sys.stderr.write(f'error: {message}\n')
  sys.exit(status)


def parse_flags(argv):
  """absl's flag parsing; a bad flag value is one `error:` line, status 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e))
