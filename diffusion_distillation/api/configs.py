"""The config a released checkpoint pairs with: a name, a file, or a ConfigDict.

A released official checkpoint holds parameters only; the architecture, the
parameterization, the schedules and the data set (image shape, classes) come
from the config it was trained with. The official configs are mirrored in the
checkout's `configs/`, so a name is enough: `imagenet64` (the file
`configs/imagenet64_base.py`), `imagenet64_base`, `cifar10`, `digits`, ...
"""

import importlib.util
import os

import ml_collections

from diffusion_distillation.errors import ModelError

# The checkout's configs/ (the package sits next to it).
CONFIG_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__)))), 'configs')
_NOT_CONFIGS = ('common',)


def _files() -> dict[str, str]:
  """Config name -> file, for every config file in CONFIG_DIR."""
  if not os.path.isdir(CONFIG_DIR):
    return {}
  return {name[:-3]: os.path.join(CONFIG_DIR, name)
          for name in sorted(os.listdir(CONFIG_DIR))
          if name.endswith('.py') and name[:-3] not in _NOT_CONFIGS}


def config_names() -> list[str]:
  """Every name `config=` accepts: file names, and `X` for `X_base`."""
  files = _files()
  short = [n[:-len('_base')] for n in files if n.endswith('_base')]
  return sorted(set(files) | set(short))


def _path_of(name: str) -> str:
  files = _files()
  for candidate in (name, f'{name}_base'):
    if candidate in files:
      return files[candidate]
  raise ModelError(
      f'config={name!r}: no such config name; known names: '
      f'{", ".join(config_names()) or f"none ({CONFIG_DIR} is missing)"} '
      '(or give the path of a config file)')


def _load_file(path: str):
  if not os.path.isfile(path):
    raise ModelError(f'config={path!r}: no such config file')
  try:
    spec = importlib.util.spec_from_file_location('dd_loaded_config', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
  except Exception as e:  # pylint: disable=broad-except
    raise ModelError(f'config={path!r}: cannot load it ({type(e).__name__}: '
                     f'{e})') from None


def resolve_config(config) -> ml_collections.ConfigDict:
  """The ConfigDict that `config` names (a name, a .py path, or a config)."""
  if isinstance(config, ml_collections.ConfigDict):
    return config
  if isinstance(config, dict):
    return ml_collections.ConfigDict(config)
  text = os.fspath(config)
  is_path = text.endswith('.py') or os.sep in text or '/' in text
  config = _load_file(os.path.abspath(os.path.expanduser(text)) if is_path
                      else _path_of(text))
  if not isinstance(config, ml_collections.ConfigDict):
    raise ModelError(f'config={text!r}: get_config() returned a '
                     f'{type(config).__name__}, not a ConfigDict')
  return config
