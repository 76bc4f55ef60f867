"""What every command-line tool shares: path flags, quiet logs, one-line errors."""

import logging as std_logging
import os
import re
import sys
from typing import Callable

from absl import app
from absl import flags
from ml_collections import config_flags

from diffusion_distillation.errors import UserError

# Config fields that hold local paths or URLs, resolved like path flags.
CONFIG_PATH_FIELDS = ('distillation.teacher_checkpoint_path',
                      'eval.inception_path', 'dataset.data_dir')


def absolute_path(path):
  """A local path made absolute against the current directory; URLs as given.

  Orbax (and any later `cd`) needs absolute local paths, so relative ones are
  resolved once, where the user gives them.
  """
  if not path or '://' in str(path):
    return path
  return os.path.abspath(os.path.expanduser(str(path)))


class _PathParser(flags.ArgumentParser):

  def parse(self, argument):
    return absolute_path(argument)

  def flag_type(self):
    return 'path'


def DEFINE_path(name, default, help_text, **kwargs):  # pylint: disable=invalid-name
  """A string flag whose local value is made absolute (see `absolute_path`)."""
  return flags.DEFINE(_PathParser(), name, default, help_text,
                      serializer=flags.ArgumentSerializer(), **kwargs)


def resolve_config_paths(config):
  """Makes the config's local path fields absolute, in place."""
  for field in CONFIG_PATH_FIELDS:
    section, name = field.split('.')
    if section in config and name in config[section]:
      config[section][name] = absolute_path(config[section][name])
  return config


class _DropInfo(std_logging.Filter):
  """Drops INFO records of libraries whose INFO lines only bury ours.

  Also orbax's warning on every checkpoint opened read-only on purpose.
  """

  _QUIET = (f'{os.sep}orbax{os.sep}', f'{os.sep}jax{os.sep}_src{os.sep}')

  def filter(self, record):
    if not any(part in record.pathname for part in self._QUIET):
      return True
    return (record.levelno > std_logging.INFO and
            not str(record.msg).startswith('Given directory is read only'))


def quiet_library_logs():
  """Our progress stays visible; orbax's and JAX's INFO chatter does not.

  JAX logs `Unable to initialize backend 'tpu'` at INFO on every machine
  without a TPU, and orbax logs a dozen lines per checkpoint.
  """
  for handler in std_logging.getLogger().handlers:
    handler.addFilter(_DropInfo())


def DEFINE_config(required: bool = True):  # pylint: disable=invalid-name
  """`--config=FILE.py` with `--config.a.b=value` overrides (ml_collections)."""
  holder = config_flags.DEFINE_config_file(
      'config', None, 'Path to a config file (configs/*.py).',
      lock_config=True)
  if required:
    flags.mark_flag_as_required('config')
  return holder


def _unknown_override(argv, error) -> str:
  """Names the `--config.<path>` override whose field the config lacks."""
  missing = str(error.args[0] if error.args else error).strip('\'"')
  overrides = [arg.split('=', 1)[0] for arg in argv[1:]
               if re.match(r'--?(no)?config\.', arg)]
  named = [o for o in overrides if missing in re.split(r'[.\[\]]', o)]
  if named:
    return f'{named[0]}: the config has no field {missing!r}'
  return f'{" ".join(overrides)}: {missing}'


def parse_flags_with_config(argv):
  """absl's flag parsing, plus one-line errors where ml_collections has none.

  An override of a field the config does not have raises a bare
  AttributeError / KeyError (not an absl flags error), and a config file that
  cannot be loaded only fails when the config is first read; both would
  otherwise end in a traceback.
  """
  try:
    remaining = parse_flags(argv)
  except (AttributeError, KeyError, IndexError) as e:
    fail(_unknown_override(argv, e))
  if flags.FLAGS['config'].present:
    try:
      flags.FLAGS.config.get('seed')
    except OSError as e:
      path = config_flags.get_config_filename(flags.FLAGS['config'])
      reason = str(e.__cause__ or e).strip().splitlines()[-1].strip()
      fail(f'--config={path}: cannot load the config file: {reason}')
  return remaining


def fail(message: str):
  """Ends the program with `error: <message>` and exit status 2."""
  sys.stderr.write(f'error: {message}\n')
  sys.exit(2)


def parse_flags(argv):
  """absl's flag parsing; a bad flag value is one `error:` line, status 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e))


def run(main: Callable, flags_parser: Callable = parse_flags):
  """`absl.app.run(main)`; a UserError ends in one line and exit status 2.

  `--help` shows the docstring of `main`'s module (absl shows `__main__`'s,
  which is the one-line `python -m` shim).
  """
  sys.modules['__main__'].__doc__ = sys.modules[main.__module__].__doc__

  def guarded(argv):
    if len(argv) > 1:
      fail(f'unexpected arguments: {" ".join(argv[1:])}')
    quiet_library_logs()
    try:
      return main(argv)
    except UserError as e:
      fail(str(e))

  app.run(guarded, flags_parser=flags_parser)
