"""What several test files share: paths, config loading, the tiny model.

Imported as `import helpers` (pytest puts tests/ on sys.path); fixtures live
in conftest.py.
"""

import os
import shutil
import socket
import subprocess
import sys

from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

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
    # Two teacher samplers keep the suite's evaluations short (test_watch
    # evaluates every one).
    'eval.samplers': ('ddim', 'ancestral'),
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


def random_params(model, seed):
  """Random parameters (numpy, no compilation) of the model's shapes.

  Unlike `init_params`, whose output conv is zero, every stage gets a distinct
  non-trivial network.
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init_params, jax.random.PRNGKey(0))

  def leaf(path, s):
    if 'scale' in jax.tree_util.keystr(path):
      value = 1 + 0.1 * rng.standard_normal(s.shape)
    elif len(s.shape) >= 2:
      value = rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1]))
    else:
      value = 0.1 * rng.standard_normal(s.shape)
    return value.astype(s.dtype)

  return jax.tree_util.tree_map_with_path(leaf, shapes)


def run_module(module, *args):
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1')
  return subprocess.run(
      [PYTHON, '-m', f'diffusion_distillation.{module}', *args],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def snapshot(path):
  """Every directory and file under `path` with file contents; None: absent."""
  if not os.path.exists(path):
    return None
  tree = {}
  for root, dirs, files in os.walk(path):
    for d in dirs:
      tree[os.path.relpath(os.path.join(root, d), path)] = 'dir'
    for f in files:
      with open(os.path.join(root, f), 'rb') as fh:
        tree[os.path.relpath(os.path.join(root, f), path)] = fh.read()
  return tree


def assert_rejected(result, *expected):
  """Non-zero exit, no traceback, and `expected` in the last stderr lines."""
  assert result.returncode != 0, result.stdout + result.stderr
  assert 'Traceback' not in result.stderr, result.stderr
  tail = '\n'.join(result.stderr.strip().splitlines()[-3:])
  for text in expected:
    assert text in tail, f'{text!r} not in the last lines of stderr:\n{tail}'


CONFIG_FILE = """import json
import ml_collections

def get_config():
  with open({path!r}) as f:
    return ml_collections.ConfigDict(json.load(f))
"""


def write_config_file(directory, config_json_path):
  """A config file (as `--config=` takes) returning a saved config.json."""
  path = directory / 'config.py'
  path.write_text(CONFIG_FILE.format(path=str(config_json_path)))
  return path


def fresh_copy(destination: str):
  """The checkout's files as a clone has them (tracked + new, not ignored)."""
  files = subprocess.run(
      ['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
      cwd=REPO, check=True, capture_output=True).stdout.decode().split('\0')
  for name in filter(None, files):
    source = os.path.join(REPO, name)
    if os.path.isfile(source):
      target = os.path.join(destination, name)
      os.makedirs(os.path.dirname(target), exist_ok=True)
      shutil.copy2(source, target)


def newcomer_env(home: str) -> dict:
  """A fresh HOME; pip keeps its download cache (the index is the same)."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(('DD_', 'XLA_', 'JAX_', 'TF_', 'PYTHON',
                              'VIRTUAL_ENV'))}
  env['PIP_CACHE_DIR'] = os.environ.get(
      'PIP_CACHE_DIR', os.path.expanduser('~/.cache/pip'))
  env.update(HOME=home, PYTHONUNBUFFERED='1')
  env.pop('XDG_CACHE_HOME', None)
  return env


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class ProcessGroup:
  """Processes started together, waited for together, killed together."""

  def __init__(self, name, logdir):
    self.name, self.logdir, self.procs = name, logdir, []

  def start(self, args, env):
    i = len(self.procs)
    log = open(self.logdir / f'{self.name}.{i}.log', 'w')
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    proc.log_path, proc.log = log.name, log
    self.procs.append(proc)

  def kill(self):
    for proc in self.procs:
      if proc.poll() is None:
        proc.kill()
    for proc in self.procs:
      proc.wait()
      proc.log.close()

  def tails(self, n=30):
    out = []
    for proc in self.procs:
      with open(proc.log_path) as f:
        lines = f.read().splitlines()
      out.append(f'--- {proc.log_path} (exit {proc.returncode}) ---\n' +
                 '\n'.join(lines[-n:]))
    return '\n'.join(out)

  def logs(self):
    return [open(p.log_path).read() for p in self.procs]
