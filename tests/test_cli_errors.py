"""Bad command lines fail with one readable line, and touch nothing.

Each case runs `python -m diffusion_distillation.main` (or `.sample`) in a
subprocess and checks: a non-zero exit status, no Python traceback, a short
message naming the offending flag or field in the last lines of stderr, and
that the workdir is exactly as before (or, if it did not exist, still does not
exist). No case gets as far as building a model or compiling anything.
"""

import json
import os

import pytest

from helpers import assert_rejected
from helpers import load_config
from helpers import REPO
from helpers import run_module
from helpers import set_fields
from helpers import snapshot

DIGITS = os.path.join(REPO, 'configs', 'digits.py')

# ml_collections loads config files with the deprecated `load_module()`.
pytestmark = [pytest.mark.heavy,  # processes, training: not the fast tier
              pytest.mark.filterwarnings('ignore:the load_module')]


def digits_config_dict(**changes):
  """configs/digits.py as a workdir's config.json would hold it."""
  return set_fields(load_config('digits'), changes).to_json_best_effort(
      indent=2)


@pytest.fixture
def existing_workdir(tmp_path):
  """A workdir created by an earlier (digits) run: its config.json and a log."""
  workdir = tmp_path / 'existing'
  (workdir / 'checkpoints').mkdir(parents=True)
  (workdir / 'config.json').write_text(digits_config_dict())
  (workdir / 'checkpoints' / 'note.txt').write_text('left by an earlier run')
  return workdir


def flag_case(case, tmp_path, workdir):
  """(arguments for `main`, texts its error must contain) for one case."""
  config, wd = f'--config={DIGITS}', f'--workdir={workdir}'
  if case == 'unknown_field':
    return [config, wd, '--config.train.nope=1'], ['--config.train.nope']
  if case == 'refused_field':  # an official field, named as refused
    return ([config, wd, '--config.model.logvar_coeff=0.5'],
            ['--config.model.logvar_coeff', 'does not implement',
             'learned variances'])
  if case == 'wrong_type':
    return ([config, wd, '--config.train.batch_size=abc'],
            ['--config.train.batch_size', 'abc'])
  if case == 'no_workdir':
    return [config], ['--workdir']
  if case == 'missing_config_file':
    return ([f'--config={tmp_path / "missing.py"}', wd],
            ['--config=', 'missing.py'])
  if case in ('config_of_42', 'config_of_a_dict'):
    path = tmp_path / f'{case}.py'
    value = 42 if case == 'config_of_42' else {'train': {'batch_size': 8}}
    path.write_text(f'def get_config():\n  return {value!r}\n')
    return ([f'--config={path}', wd],
            [f'--config={path}', 'not an ml_collections.ConfigDict',
             repr(value)])
  if case == 'missing_teacher':
    teacher = tmp_path / 'no_teacher_here'
    return ([config, wd,
             f'--config.distillation.teacher_checkpoint_path={teacher}'],
            ['config.distillation.teacher_checkpoint_path', str(teacher)])
  raise ValueError(case)


@pytest.mark.parametrize('case', ['unknown_field', 'refused_field',
                                  'wrong_type', 'no_workdir',
                                  'missing_config_file', 'config_of_42',
                                  'config_of_a_dict', 'missing_teacher'])
def test_main_rejects_bad_flags_before_creating_the_workdir(case, tmp_path):
  workdir = tmp_path / 'new_workdir'
  args, expected = flag_case(case, tmp_path, workdir)
  assert_rejected(run_module('main', *args), *expected)
  assert not workdir.exists()


def test_main_rejects_an_invalid_value_and_leaves_the_workdir_alone(
    existing_workdir):
  before = snapshot(existing_workdir)
  result = run_module('main', f'--config={DIGITS}',
                      f'--workdir={existing_workdir}',
                      '--config.distillation.start_num_steps=6')
  assert_rejected(result, 'config.distillation.start_num_steps', '6')
  assert snapshot(existing_workdir) == before


def test_main_refuses_a_workdir_of_another_architecture(existing_workdir):
  (existing_workdir / 'config.json').write_text(
      digits_config_dict(**{'model.args.ch': 64}))
  assert json.loads((existing_workdir / 'config.json').read_text())[
      'model']['args']['ch'] == 64
  before = snapshot(existing_workdir)
  result = run_module('main', f'--config={DIGITS}',
                      f'--workdir={existing_workdir}')
  assert_rejected(result, 'config.model.args.ch', 'created with 64',
                  'new --workdir')
  assert snapshot(existing_workdir) == before


def test_sample_rejects_a_directory_that_is_not_a_workdir(tmp_path):
  workdir = tmp_path / 'not_a_workdir'
  result = run_module('sample', f'--workdir={workdir}', '--num_steps=4',
                      f'--output={workdir / "samples.npz"}')
  assert_rejected(result, str(workdir), 'not a training workdir')
  assert not workdir.exists()


def test_help_lists_the_commands_flags():
  result = run_module('sample', '--help')  # absl's --help exits with 1
  for flag in ('--workdir', '--checkpoint', '--num_steps', '--sampler',
               '--output', '--guidance'):
    assert f'  {flag}' in result.stdout, flag
  assert '--config' in run_module('main', '--help').stdout


def test_sample_refuses_to_overwrite_without_the_flag(existing_workdir,
                                                      tmp_path):
  output = tmp_path / 'samples.npz'
  output.write_bytes(b'an earlier result')
  before = snapshot(tmp_path)
  result = run_module('sample', f'--workdir={existing_workdir}',
                      '--num_steps=2', f'--output={output}')
  assert_rejected(result, f'--output={output} exists', 'pass --overwrite')
  assert snapshot(tmp_path) == before


def test_sample_rejects_zero_steps(existing_workdir, tmp_path):
  before = snapshot(existing_workdir)
  output = tmp_path / 'out' / 'samples.npz'
  result = run_module('sample', f'--workdir={existing_workdir}',
                      '--num_steps=0', f'--output={output}')
  assert_rejected(result, '--num_steps', '0')
  assert snapshot(existing_workdir) == before
  assert not output.parent.exists()
