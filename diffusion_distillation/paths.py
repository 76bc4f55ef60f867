"""Local paths made absolute where the user gives them; URLs left as given.

Orbax (and any later `cd`) needs absolute local paths, so a relative path from
a flag, a config field or a Python call is resolved once, against the current
directory, when it comes in.
"""

import importlib.util
import os
import threading

from diffusion_distillation.errors import first_line
from diffusion_distillation.errors import UserError

CACHE_ENV = 'DD_CACHE_DIR'
# etils.epath reads gs:// through TensorFlow's gfile when it is installed,
# else through gcsfs (the `gcs` extra).
GCS_BACKENDS = ('gcsfs', 'tensorflow')


def _installed(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except ValueError:  # a module set to None in sys.modules
    return False


def is_local(path) -> bool:
  """A local path, not a URL such as gs://..."""
  return '://' not in str(path)


def install_command(extra: str) -> str:
  """The command that adds `extra` to this installation: from the checkout
  the package is installed from (editable), else from the package index."""
  checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if os.path.exists(os.path.join(checkout, 'setup.cfg')):
    where = os.path.relpath(checkout)
    if where.startswith('..'):  # not below the current directory
      where = checkout
    return f"pip install -e '{where}[{extra}]'"
  return f"pip install 'diffusion_distillation[{extra}]'"


def check_url_support(path):
  """Refuses a gs:// path when nothing that reads gs:// is installed (epath
  would raise ImportError at the first access), naming the extra."""
  if str(path).startswith('gs://') and not any(map(_installed, GCS_BACKENDS)):
    raise UserError(f'{path}: gs:// paths need the gcs extra: '
                    f"{install_command('gcs')}")


REACH_TIMEOUT_S = 30.
# Where a URL scheme's store answers, for the line when it does not.
_HOSTS = {'gs': 'storage.googleapis.com'}


def check_reachable(path, label=None):
  """For a URL (gs://...): one call to its store, bounded in time, so
  that an unreachable store is one line in seconds instead of minutes of a
  client's retries (and their logged tracebacks). Local paths: nothing."""
  if is_local(path):
    return
  check_url_support(path)
  from etils import epath  # pylint: disable=g-import-not-at-top
  label, failed, timeout = label or str(path), [], REACH_TIMEOUT_S

  def probe():
    try:
      epath.Path(path).exists()
    except Exception as e:  # pylint: disable=broad-except
      failed.append(e)

  thread = threading.Thread(target=probe, name='dd-reach', daemon=True)
  thread.start()
  thread.join(timeout)
  scheme = str(path).split('://', 1)[0]
  host = _HOSTS.get(scheme, f'the {scheme}:// store')
  if thread.is_alive():
    raise UserError(f'{label}: no answer from {host} within {timeout:g} s '
                    '(no network, a proxy or a firewall?); check the '
                    'connection, or use a local path')
  if failed:
    error, = failed
    raise UserError(f'{label}: cannot reach {host} ({type(error).__name__}: '
                    f'{first_line(error)})')


def absolute_path(path):
  """`path` made absolute if it is local; `gs://...` and empty values as is
  (a gs:// path checked by `check_url_support`)."""
  if not path:
    return path
  if not is_local(path):
    check_url_support(path)
    return path
  return os.path.abspath(os.path.expanduser(str(path)))


def is_config_name(text: str) -> bool:
  """`--config` / `config=` text that names an installed config (`digits`)
  rather than a config file's path."""
  return not (text.endswith('.py') or os.sep in text or '/' in text)


def compilation_cache_dir() -> str:
  """Where compiled programs are kept (the CLI's `--compilation_cache`, the
  API's `load`): $JAX_COMPILATION_CACHE_DIR, else `<cache dir>/jax`."""
  return os.environ.get('JAX_COMPILATION_CACHE_DIR') or os.path.join(
      default_cache_dir(), 'jax')


def default_cache_dir() -> str:
  """The metric caches' directory when none is given.

  `$DD_CACHE_DIR`, else `$XDG_CACHE_HOME` (or ~/.cache)/diffusion_distillation.
  """
  if os.environ.get(CACHE_ENV):
    return os.environ[CACHE_ENV]
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(
      os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'diffusion_distillation')
