"""What every command-line tool shares: path flags, quiet logs, one-line errors."""

import logging as std_logging
import os
import sys
from typing import Callable

from absl import app
from absl import flags

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
  """Drops INFO records of libraries whose INFO lines only bury ours."""

  _QUIET = (f'{os.sep}orbax{os.sep}', f'{os.sep}jax{os.sep}_src{os.sep}')

  def filter(self, record):
    return (record.levelno > std_logging.INFO or
            not any(part in record.pathname for part in self._QUIET))


def quiet_library_logs():
  """Our progress stays visible; orbax's and JAX's INFO chatter does not.

  JAX logs `Unable to initialize backend 'tpu'` at INFO on every machine
  without a TPU, and orbax logs a dozen lines per checkpoint.
  """
  for handler in std_logging.getLogger().handlers:
    handler.addFilter(_DropInfo())


def fail(message: str):
  """Ends the program with `error: <message>` and exit status 2."""
  sys.stderr.write(f'error: {message}\n')
  sys.exit(2)


def run(main: Callable, **kwargs):
  """`absl.app.run(main)`; a UserError ends in one line and exit status 2."""

  def guarded(argv):
    if len(argv) > 1:
      fail(f'unexpected arguments: {" ".join(argv[1:])}')
    quiet_library_logs()
    try:
      return main(argv)
    except UserError as e:
      fail(str(e))

  app.run(guarded, **kwargs)
