"""The persistent compilation cache the command-line tools turn on."""

import os
import subprocess

import pytest

from helpers import PYTHON
from helpers import subprocess_env

pytestmark = pytest.mark.slow  # end-to-end runs


def _sample(workdir, out, cache, *extra, jax_cache_dir=None):
  """`sample` with DD_CACHE_DIR=cache and, if given, JAX's own variable."""
  env = dict(subprocess_env(), JAX_LOG_COMPILES='1', DD_CACHE_DIR=str(cache))
  env.pop('JAX_COMPILATION_CACHE_DIR')  # the suite's
  if jax_cache_dir:
    env['JAX_COMPILATION_CACHE_DIR'] = str(jax_cache_dir)
  done = subprocess.run(
      [PYTHON, '-m', 'diffusion_distillation.sample', f'--workdir={workdir}',
       '--num_steps=2', '--num_samples=4', f'--output={out}', *extra],
      env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stderr


def test_a_second_sample_process_loads_what_the_first_compiled(
    finished_workdir, tmp_path):
  workdir, _ = finished_workdir
  cache = tmp_path / 'cache'
  first = _sample(workdir, tmp_path / 'a.npz', cache)
  assert 'Persistent compilation cache hit' not in first
  assert os.listdir(cache / 'jax')  # under DD_CACHE_DIR, by default
  second = _sample(workdir, tmp_path / 'b.npz', cache)
  assert 'Persistent compilation cache hit' in second
  assert 'Persistent compilation cache miss' not in second


def test_nocompilation_cache_keeps_nothing(finished_workdir, tmp_path):
  """Not even where $JAX_COMPILATION_CACHE_DIR points (which is used
  otherwise, in place of the default)."""
  workdir, _ = finished_workdir
  stderr = _sample(workdir, tmp_path / 'a.npz', tmp_path / 'cache',
                   '--nocompilation_cache', jax_cache_dir=tmp_path / 'jax')
  assert 'Persistent compilation cache' not in stderr
  assert not (tmp_path / 'cache' / 'jax').exists()
  assert not (tmp_path / 'jax').exists() or not os.listdir(tmp_path / 'jax')
  _sample(workdir, tmp_path / 'b.npz', tmp_path / 'cache',
          jax_cache_dir=tmp_path / 'jax')
  assert os.listdir(tmp_path / 'jax')
  assert not (tmp_path / 'cache' / 'jax').exists()


def _api_sample(workdir, cache, **env_extra):
  """`dd.load(workdir).sample(4)` in a fresh Python, with DD_CACHE_DIR=cache."""
  env = dict(subprocess_env(), JAX_LOG_COMPILES='1', DD_CACHE_DIR=str(cache),
             **env_extra)
  env.pop('JAX_COMPILATION_CACHE_DIR')  # the suite's
  done = subprocess.run(
      [PYTHON, '-c', 'import diffusion_distillation as dd; '
       f'dd.load({str(workdir)!r}, num_steps=2).sample(4)'],
      env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stderr


def test_the_api_uses_the_same_cache(finished_workdir, tmp_path):
  """A notebook's or script's second process loads what the first one
  compiled, from where the CLI keeps it; JAX's own switch turns it off."""
  workdir, _ = finished_workdir
  cache = tmp_path / 'cache'
  assert 'Persistent compilation cache hit' not in _api_sample(workdir, cache)
  assert os.listdir(cache / 'jax')
  assert 'Persistent compilation cache hit' in _api_sample(workdir, cache)
  off = tmp_path / 'off'
  stderr = _api_sample(workdir, off, JAX_ENABLE_COMPILATION_CACHE='false')
  assert 'Persistent compilation cache' not in stderr
  assert not (off / 'jax').exists()
