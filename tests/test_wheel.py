"""A wheel installed outside the checkout, as a user installs a release.

The wheel is built from a fresh copy of the checkout and installed with its
dependencies into a fresh virtualenv; everything then runs from a directory
that holds no checkout: configs by name (`--config=digits`,
`dd.config_names()`, `config='imagenet64'`), the short digits pipeline, and
`dd.load` of an official-layout file with the config it pairs with.
"""

import glob
import os
import subprocess
import sys

import pytest

from helpers import fresh_copy
from helpers import newcomer_env

pytestmark = pytest.mark.slow  # end-to-end runs

SHORT_DIGITS = ('--config.train.num_train_steps=4',
                '--config.train.batch_size=8',
                '--config.model.eval_sampling_num_steps=4',
                '--config.distillation.steps_per_iter=2',
                '--config.eval.run_after_training=false',
                '--config.eval.grid_samples=8')
CHECK_API = """
import diffusion_distillation as dd
from diffusion_distillation.api import configs
assert 'site-packages' in dd.__file__, dd.__file__
names = dd.config_names()
assert {'digits', 'digits_guided', 'imagenet64', 'cifar10_distill'} <= set(
    names), names
assert configs.resolve_config('imagenet64').dataset.name == 'imagenet64'
from diffusion_distillation import paths  # a missing extra, as a wheel takes it
assert paths.install_command('tfds') == (
    "pip install 'diffusion_distillation[tfds]'"), paths.install_command('tfds')
model = dd.load('student_1.msgpack', config='digits', num_steps=1)
images = model.sample(4, seed=0)
print('names', len(names), 'images', images.shape, images.dtype)
"""


def _run(command, cwd, env):
  proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=900, check=False)
  assert proc.returncode == 0, f'{command}\n{(proc.stdout + proc.stderr)[-4000:]}'
  return proc.stdout + proc.stderr


def test_a_wheel_installed_outside_the_checkout_runs_configs_by_name(
    tmp_path):
  source, user = tmp_path / 'source', tmp_path / 'user'
  home = tmp_path / 'home'
  for d in (user, home):
    d.mkdir()
  fresh_copy(str(source))
  env = newcomer_env(str(home))
  _run([sys.executable, '-m', 'pip', 'wheel', '--quiet', '--no-deps',
        '--disable-pip-version-check', '-w', str(tmp_path / 'dist'),
        str(source)], tmp_path, env)
  wheel, = glob.glob(str(tmp_path / 'dist' / '*.whl'))
  venv = tmp_path / 'venv'
  _run([sys.executable, '-m', 'venv', str(venv)], tmp_path, env)
  python = str(venv / 'bin' / 'python')
  _run([python, '-m', 'pip', 'install', '--quiet',
        '--disable-pip-version-check', wheel], user, env)

  env = dict(env, JAX_PLATFORMS='cpu')
  output = _run([python, '-m', 'diffusion_distillation.main',
                 '--config=digits', '--workdir=wd', *SHORT_DIGITS], user, env)
  assert 'Finished.' in output and 'distill_1' in output
  _run([python, '-m', 'diffusion_distillation.export', '--workdir=wd',
        '--num_steps=1', '--format=official', '--output=student_1.msgpack'],
       user, env)
  output = _run([python, '-c', CHECK_API], user, env)
  assert 'images (4, 8, 8, 1) uint8' in output, output
  assert not os.path.exists(user / 'configs')
