"""The config a released checkpoint pairs with: a name, a file, or a ConfigDict.

A released official checkpoint holds parameters only; the architecture, the
parameterization, the schedules and the data set (image shape, classes) come
from the config it was trained with. The configs (the checkout's `configs/`)
are installed with the package as `diffusion_distillation.configs`, so a
name is enough: `imagenet64` (`configs/imagenet64_base.py`),
`imagenet64_base`, `cifar10`, `digits`, ...
"""

import importlib
import importlib.util
import os
import pkgutil

import ml_collections

from diffusion_distillation import config as config_lib
from diffusion_distillation import paths
from diffusion_distillation.errors import ModelError

PACKAGE = 'diffusion_distillation.configs'  # configs/, installed
_NOT_CONFIGS = ('common',)


def _modules() -> list[str]:
  """Every config module of the installed `diffusion_distillation.configs`."""
  package = importlib.import_module(PACKAGE)
  return sorted(m.name for m in pkgutil.iter_modules(package.__path__)
                if m.name not in _NOT_CONFIGS)


def config_names() -> list[str]:
  """Every name `config=` accepts: file names, and `X` for `X_base`.

  Returns:
    The sorted names of the installed configs (the checkout's `configs/`),
    e.g. 'cifar10', 'digits', 'imagenet64', 'imagenet64_base'.
  """
  modules = _modules()
  short = [n[:-len('_base')] for n in modules if n.endswith('_base')]
  return sorted(set(modules) | set(short))


def config_file(name: str) -> str:
  """The file of the config called `name` (ModelError: no such name)."""
  modules = _modules()
  for candidate in (name, f'{name}_base'):
    if candidate in modules:
      return importlib.util.find_spec(f'{PACKAGE}.{candidate}').origin
  raise ModelError(
      f'config={name!r}: no such config name; known names: '
      f'{", ".join(config_names())} (or give the path of a config file)')


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
  """The complete config `config` names (a name, a .py path, or a config)."""
  if not isinstance(config, (ml_collections.ConfigDict, dict)):
    text = os.fspath(config)
    config = _load_file(config_file(text) if paths.is_config_name(text) else
                        os.path.abspath(os.path.expanduser(text)))
    if not isinstance(config, ml_collections.ConfigDict):
      raise ModelError(f'config={text!r}: get_config() returned a '
                       f'{type(config).__name__}, not a ConfigDict')
  try:
    return config_lib.complete(config)
  except config_lib.ConfigError as e:
    raise ModelError(str(e)) from None
