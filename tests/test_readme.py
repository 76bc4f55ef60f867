"""The README's Quick start, run as a newcomer runs it.

The first command of the Quick start block is read from README.md and run
exactly as printed (relative `--workdir`, `bash launch/run.sh` creating its
own `.venv`) in a fresh copy of the checkout with a fresh HOME; only
short-run overrides are appended. Then the workdir is sampled and used as a
teacher through relative paths, and the command is rerun to check it resumes.
If the README's command changes, this test follows it.
"""

import os
import re
import shlex
import subprocess

import numpy as np
import pytest

from helpers import fresh_copy
from helpers import newcomer_env
from helpers import REPO

pytestmark = pytest.mark.slow  # end-to-end runs

SHORT_RUN = ('--config.train.num_train_steps=20',
             '--config.distillation.start_num_steps=4',
             '--config.distillation.steps_per_iter=5',
             '--config.eval.num_samples=20', '--config.eval.grid_samples=16',
             # One solver beside DDIM: the newcomer's evaluation, shorter.
             '--config.eval.samplers=ddim,unipc')
# Lines a newcomer should never see from a successful run.
NOISE = ('Traceback', "Unable to initialize backend 'tpu'",
         'SetuptoolsDeprecationWarning', 'Editable installation',
         'orbax-checkpoint version', 'Given directory is read only',
         'CheckpointManagerOptions.read_only', 'oneDNN',
         'Setting work unit notes')


def quick_start_commands() -> list[str]:
  """The shell commands of the README's Quick start block, in order."""
  with open(os.path.join(REPO, 'README.md')) as f:
    readme = f.read()
  section = readme.split('## Quick start', 1)[1]
  block = re.search(r'```sh\n(.*?)```', section, re.S).group(1)
  return [line.strip() for line in block.splitlines()
          if line.strip() and not line.strip().startswith('#')]


def readme_sample_command() -> str:
  """The README's `sample` command for the digits workdir, as one line."""
  with open(os.path.join(REPO, 'README.md')) as f:
    readme = f.read()
  command = re.search(r'```sh\n(\.venv/bin/python -m diffusion_distillation'
                      r'\.sample --workdir=workdirs/digits .*?)```', readme,
                      re.S).group(1)
  return command.replace('\\\n', ' ')


def run(command, cwd, env):
  proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=900, check=False)
  output = proc.stdout + proc.stderr
  assert proc.returncode == 0, f'{command}\n{output[-4000:]}'
  return proc.stdout, output


def final_losses(stdout: str) -> dict[str, str]:
  """stage -> final loss, from the closing table that `main` prints."""
  table = stdout.split('Finished.', 1)[1]
  return dict(re.findall(r'^(base|distill_\d+)\s+\d+\s+\d+\s+(\S+)', table,
                         re.M))


def test_quick_start_block_has_the_two_commands():
  first, second = quick_start_commands()
  assert first.startswith('bash launch/run.sh --config=configs/digits.py')
  assert second == 'bash tests/run.sh'


def test_first_command_as_printed_in_a_fresh_clone(tmp_path):
  clone, home = str(tmp_path / 'clone'), str(tmp_path / 'home')
  os.makedirs(home)
  fresh_copy(clone)
  env = newcomer_env(home)
  command = shlex.split(quick_start_commands()[0]) + list(SHORT_RUN)
  workdir = next(a.split('=', 1)[1] for a in command
                 if a.startswith('--workdir='))
  assert not os.path.isabs(workdir)

  stdout, output = run(command, clone, env)
  for noise in NOISE:
    assert noise not in output, noise
  losses = final_losses(stdout)
  assert list(losses) == ['base', 'distill_2', 'distill_1']
  assert os.path.exists(
      os.path.join(clone, workdir, 'eval', 'results.json'))

  python = os.path.join(clone, '.venv', 'bin', 'python')
  # The README's sample command, at a step count this short run has.
  run(shlex.split(readme_sample_command()) + ['--num_steps=2'], clone, env)
  with np.load(os.path.join(clone, 'samples', 'digits.npz')) as f:
    assert f['images'].shape == (16, 8, 8, 1)
  assert os.path.exists(os.path.join(clone, 'samples', 'digits.png'))

  # A relative teacher path in a config field, from another directory.
  elsewhere = os.path.join(clone, 'samples')
  run([python, '-m', 'diffusion_distillation.main',
       f'--config={os.path.join(clone, "configs", "digits.py")}',
       '--workdir=student', '--config.train.num_train_steps=0',
       f'--config.distillation.teacher_checkpoint_path=../{workdir}',
       '--config.distillation.start_num_steps=4',
       '--config.distillation.end_num_steps=2',
       '--config.distillation.steps_per_iter=2',
       '--config.eval.run_after_training=false'], elsewhere, env)
  assert os.path.isdir(os.path.join(elsewhere, 'student', 'checkpoints',
                                    'distill_2'))

  # The same command again resumes: every stage is found finished.
  rerun_stdout, rerun_output = run(command, clone, env)
  assert final_losses(rerun_stdout) == losses
  assert 'install: up to date' in rerun_output
  assert ' updates, sampler steps ' not in rerun_output  # nothing trained
  assert 'is up to date (same settings, same models): not evaluated again' \
      in rerun_output
