"""What several test files share: paths, config loading, the tiny model.

Imported as `import helpers` (pytest puts tests/ on sys.path); fixtures live
in conftest.py.
"""

import os
import sys

from absl import flags
from ml_collections import config_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, 'configs')
PYTHON = sys.executable

# A model small enough to compile and train in seconds on 2 CPU cores.
TINY_OVERRIDES = {
    'model.args.ch': 32,
    'model.args.emb_ch': 32,
    'model.args.ch_mult': (1,),
    'model.args.num_res_blocks': 1,
    'model.args.attn_resolutions': (),
    'model.eval_sampling_num_steps': 8,
    'train.num_train_steps': 4,
    'train.batch_size': 8,
    'train.substeps': 1,
    'train.checkpoint_every_steps': 2,
    'train.log_loss_every_steps': 2,
    'distillation.start_num_steps': 8,
    'distillation.steps_per_iter': 4,
    'eval.run_after_training': False,
    'eval.grid_samples': 8,
    'eval.batch_size': 8,
}


def config_path(name: str) -> str:
  return os.path.join(CONFIG_DIR, f'{name}.py')


def load_config(name: str, *overrides: str, lock: bool = False):
  """configs/<name>.py as `--config=` loads it, with `--config.*` overrides."""
  flag_values = flags.FlagValues()
  argv = ['main', f'--config={config_path(name)}', *overrides]
  config_flags.DEFINE_config_file('config', None, flag_values=flag_values,
                                  lock_config=lock, sys_argv=argv)
  flag_values(argv)
  return flag_values.config


def set_fields(config, fields: dict):
  """Sets dotted `fields` ('a.b': value) of a ConfigDict in place."""
  for field, value in fields.items():
    node = config
    *parents, leaf = field.split('.')
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


def override_flags(overrides=None):
  """The command-line form of TINY_OVERRIDES (plus `overrides`)."""
  merged = dict(TINY_OVERRIDES, **(overrides or {}))
  return [f'--config.{k}={v}' for k, v in merged.items()]


def tiny_config(**overrides):
  """configs/digits.py with TINY_OVERRIDES applied (dots as '__' in kwargs)."""
  extra = {k.replace('__', '.'): v for k, v in overrides.items()}
  return set_fields(load_config('digits'), dict(TINY_OVERRIDES, **extra))


def subprocess_env(num_devices=1):
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={num_devices}'
  env['PYTHONUNBUFFERED'] = '1'
  return env


def damage_arrays(step_dir):
  """Overwrites the middle of the largest array data file of a checkpoint."""
  files = [p for p in step_dir.rglob('*')
           if p.is_file() and p.parent.name == 'd']
  target = max(files, key=lambda p: p.stat().st_size)
  data = bytearray(target.read_bytes())
  middle = len(data) // 2
  data[middle:middle + 64] = bytes(range(64))
  target.write_bytes(bytes(data))
