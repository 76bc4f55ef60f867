"""The command-line tools' shared edge: path flags and one-line errors."""

import errno
import os
import signal
import subprocess
import sys
import time
import types

from absl import flags
import pytest

from diffusion_distillation import config as config_lib
from diffusion_distillation.cli import common
from diffusion_distillation.cli import ending
from diffusion_distillation.errors import UserError
from diffusion_distillation.parallel import preemption


def test_path_flag_resolves_local_paths_against_the_current_directory(
    tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  values = flags.FlagValues()
  common.DEFINE_path('workdir', None, 'a path', flag_values=values)
  common.DEFINE_path('bucket', None, 'a url', flag_values=values)
  common.DEFINE_path('home', None, 'under ~', flag_values=values)
  values(['prog', '--workdir=workdirs/digits', '--bucket=gs://b/run',
          '--home=~/x'])
  assert values.workdir == os.path.join(str(tmp_path), 'workdirs', 'digits')
  assert values.bucket == 'gs://b/run'
  assert values.home == os.path.expanduser('~/x')


def test_config_path_fields_become_absolute_and_empty_ones_stay_empty(
    tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = config_lib.default_config()
  config_lib.add_section(config, 'distillation',
                         teacher_checkpoint_path='teachers/t')
  config.eval.inception_path = 'gs://b/inception.pb'
  config.dataset.path = 'my_images'  # an image folder, stored absolute too
  config = common.complete_config(config)
  assert config.distillation.teacher_checkpoint_path == str(
      tmp_path / 'teachers' / 't')
  assert config.dataset.path == str(tmp_path / 'my_images')
  assert config.eval.inception_path == 'gs://b/inception.pb'
  assert config.dataset.data_dir == ''


def test_a_user_error_ends_in_one_line_and_status_2(capsys):
  def main(argv):
    del argv
    raise UserError('--workdir: /x is not a training workdir')

  with pytest.raises(SystemExit) as exit_info:
    ending.run(main, flags_parser=lambda argv: common.parse_flags(['prog']))
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == (
      'error: --workdir: /x is not a training workdir\n')


@pytest.mark.parametrize('error, line', [
    (MemoryError(), 'error: out of memory (MemoryError); lower --batch_size'),
    (RuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to '
                  'allocate 17179869184 bytes.\n(more)'),
     'error: out of memory (RESOURCE_EXHAUSTED: Out of memory while trying '
     'to allocate 17179869184 bytes.); lower --batch_size'),
    (OSError(errno.ENOSPC, 'No space left on device', '/w/s.npz'),
     'error: /w/s.npz: no space left on device; free space and rerun'),
    (ValueError('RESOURCE_EXHAUSTED: Error writing "x": No space left on '
                'device'),  # TensorStore's words
     'error: a file: no space left on device; free space and rerun'),
])
def test_a_machine_fault_ends_in_one_line_and_status_1(capsys, error, line):
  def main(argv):
    del argv
    raise error

  with pytest.raises(SystemExit) as exit_info:
    ending.run(main, flags_parser=lambda argv: common.parse_flags(['prog']),
               memory_hint=ending.BATCH_MEMORY_HINT)
  assert exit_info.value.code == 1
  assert capsys.readouterr().err == line + '\n'


def test_sigterm_outside_training_ends_in_one_line_and_status_143(capsys):
  def main(argv):
    del argv
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # the handler raises within it

  before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(SystemExit) as exit_info:
    ending.run(main, flags_parser=lambda argv: common.parse_flags(['prog']))
  assert exit_info.value.code == 143
  assert capsys.readouterr().err.startswith('terminated (SIGTERM); rerun ')
  assert signal.getsignal(signal.SIGTERM) is before


def test_ctrl_c_outside_training_ends_in_one_line_and_status_130(capsys):
  def main(argv):
    del argv
    raise KeyboardInterrupt

  with pytest.raises(SystemExit) as exit_info:
    ending.run(main, flags_parser=lambda argv: common.parse_flags(['prog']))
  assert exit_info.value.code == 130
  assert capsys.readouterr().err == 'interrupted\n'


@pytest.mark.parametrize('signum,status', [(signal.SIGINT, 130),
                                           (signal.SIGTERM, 1)])
def test_a_stopped_training_run_ends_in_its_one_line(capsys, signum, status):
  message = 'preempted: checkpoint saved at base step 3; rerun ...'

  def main(argv):
    del argv
    with preemption.handling():
      os.kill(os.getpid(), signum)
      raise preemption.Preempted(message)

  with pytest.raises(SystemExit) as exit_info:
    ending.run(main, flags_parser=lambda argv: common.parse_flags(['prog']))
  assert exit_info.value.code == status
  assert capsys.readouterr().err == message + '\n'


def test_a_ctrl_c_that_python_would_drop_still_ends_the_program(
    capsys, monkeypatch):
  exits = []
  monkeypatch.setattr(ending.os, '_exit', exits.append)
  unraisable = types.SimpleNamespace(exc_type=KeyboardInterrupt)
  ending._on_unraisable(lambda u: exits.append('passed on'), unraisable)  # pylint: disable=protected-access
  assert exits == [130]
  assert capsys.readouterr().err == 'interrupted\n'
  ending._on_unraisable(lambda u: exits.append('passed on'),  # pylint: disable=protected-access
                        types.SimpleNamespace(exc_type=ValueError))
  assert exits == [130, 'passed on']


@pytest.mark.parametrize('api,cli', [
    ('which student? pass num_steps; available: 1, 2',
     'which student? pass --num_steps; available: 1, 2'),
    ("pass num_steps=4 (or leave it out), or model='teacher' for any",
     'pass --num_steps=4 (or leave it out), or --model=teacher for any'),
    ('the config it pairs with (config=NAME or a file)',
     'the config it pairs with (--config=NAME or a file)'),
    ('it has its own config (config.json); leave out config',
     'it has its own config (config.json); leave out --config'),
    ('seed=-1: out of range', '--seed=-1: out of range'),
    ("config.model.mean_type is 'eps'; --num_steps=3 stays",
     "config.model.mean_type is 'eps'; --num_steps=3 stays"),
])
def test_api_messages_in_flag_words(api, cli):
  """Was: the command-line tools printed the API's argument words."""
  assert common.in_flag_words(api, ['num_steps', 'model', 'config',
                                    'seed']) == cli


def test_comma_lists_are_read_wherever_a_list_of_names_is():
  # ml_collections reads `--config.eval.samplers=ddim,ancestral` as one word.
  config = config_lib.default_config()
  config.eval.samplers = ('ddim,ancestral',)
  config.eval.student_samplers = ('ddim, stochastic',)
  config = common.complete_config(config)
  assert config.eval.samplers == ('ddim', 'ancestral')
  assert config.eval.student_samplers == ('ddim', 'stochastic')


DETERMINISM_PROBE = """
import os, sys
from jax._src import xla_bridge
from diffusion_distillation.cli import main
from diffusion_distillation.parallel import distributed

def started(*args, **kwargs):  # where JAX's first backend would start
  print(os.environ['XLA_FLAGS'], bool(xla_bridge._backends), flush=True)
  raise SystemExit(0)

distributed.initialize = started
sys.argv = ['main', '--config=digits', '--workdir=' + sys.argv[1], *sys.argv[2:]]
main.run()
"""


@pytest.mark.parametrize('value, flags', [
    ('true', '--xla_force_host_platform_device_count=1 '
     '--xla_gpu_deterministic_ops=true'),
    ('false', '--xla_force_host_platform_device_count=1'),
])
@pytest.mark.heavy  # starts a process
def test_gpu_determinism_reaches_xla_flags_before_jax_starts(tmp_path, value,
                                                             flags):
  result = subprocess.run(
      [sys.executable, '-c', DETERMINISM_PROBE, str(tmp_path / 'w'),
       f'--config.train.gpu_deterministic_ops={value}'],
      env=dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1'),
      capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.splitlines()[-1] == f'{flags} False'
