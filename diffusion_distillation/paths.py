"""Local paths made absolute where the user gives them; URLs left as given.

Orbax (and any later `cd`) needs absolute local paths, so a relative path from
a flag, a config field or a Python call is resolved once, against the current
directory, when it comes in.
"""

import os

CACHE_ENV = 'DD_CACHE_DIR'


def absolute_path(path):
  """`path` made absolute if it is local; `gs://...` and empty values as is."""
  if not path or '://' in str(path):
    return path
  return os.path.abspath(os.path.expanduser(str(path)))


def is_config_name(text: str) -> bool:
  """`--config` / `config=` text that names an installed config (`digits`)
  rather than a config file's path."""
  return not (text.endswith('.py') or os.sep in text or '/' in text)


def default_cache_dir() -> str:
  """The metric caches' directory when none is given.

  `$DD_CACHE_DIR`, else `$XDG_CACHE_HOME` (or ~/.cache)/diffusion_distillation.
  """
  if os.environ.get(CACHE_ENV):
    return os.environ[CACHE_ENV]
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(
      os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'diffusion_distillation')
