"""Shared test fixtures: a tiny pipeline config and a finished workdir."""

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Compiled programs are cached on disk, so the subprocess runs of the pipeline
# in the tests compile each program once per suite rather than once per run.
CACHE_DIR = os.environ.setdefault(
    'JAX_COMPILATION_CACHE_DIR', os.path.join(REPO, '.pytest_cache', 'jax'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

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


def override_flags(overrides=None):
  """The command-line form of TINY_OVERRIDES (plus `overrides`)."""
  merged = dict(TINY_OVERRIDES, **(overrides or {}))
  return [f'--config.{k}={v}' for k, v in merged.items()]


def tiny_config(**overrides):
  """configs/digits.py with TINY_OVERRIDES applied (dots as '__' in kwargs)."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  module = config_flags.config_flags._LoadConfigModule(  # pylint: disable=protected-access
      'digits', os.path.join(REPO, 'configs', 'digits.py'))
  config = module.get_config()
  merged = dict(TINY_OVERRIDES,
                **{k.replace('__', '.'): v for k, v in overrides.items()})
  for field, value in merged.items():
    node = config
    *parents, leaf = field.split('.')
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


def subprocess_env(num_devices=1):
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={num_devices}'
  env['PYTHONUNBUFFERED'] = '1'
  return env


@pytest.fixture(scope='session')
def finished_workdir(tmp_path_factory):
  """A workdir in which the tiny pipeline (teacher + 3 stages) has finished."""
  from diffusion_distillation import train  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp('finished')
  summary = train.run(tiny_config(), str(workdir))
  return workdir, summary


PYTHON = sys.executable
