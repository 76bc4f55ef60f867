"""Faults a long run meets end in one line, before any work is lost or done.

One test per fault: a corrupt WORKDIR/config.json, two runs on one workdir
(a lock; a lease on gs://), Ctrl-C (a checkpoint in training, one line
elsewhere) and bad input (a workdir that is a file or cannot be written, a
broken config file, a mistyped override, a non-finite learning rate, an
--output that is a directory). The commands run in subprocesses, as a user
runs them.
"""

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from diffusion_distillation import config as config_lib
from diffusion_distillation.parallel import preemption
from diffusion_distillation.pipeline import workdir_lock

from helpers import assert_rejected
from helpers import override_flags
from helpers import REPO
from helpers import run_module
from helpers import snapshot
from helpers import tiny_config

DIGITS = os.path.join(REPO, 'configs', 'digits.py')
# Directories that even root cannot write in (Linux's sysfs and procfs): the
# tests run as root in CI, where permission bits do not stop writes.
UNWRITABLE = ('/sys/kernel', '/proc')

pytestmark = [pytest.mark.heavy,  # processes, training: not the fast tier
              pytest.mark.filterwarnings('ignore:the load_module')]


def _unwritable_dir():
  for directory in UNWRITABLE:
    try:
      with open(os.path.join(directory, 'dd_probe'), 'w'):
        pass
    except OSError:
      return directory
    os.remove(os.path.join(directory, 'dd_probe'))
  raise AssertionError(f'these tests need a directory that root cannot write '
                       f'in; none of {UNWRITABLE} is one here')


@pytest.fixture
def workdir_copy(finished_workdir, tmp_path):
  """A finished tiny workdir that the test may change."""
  copy = tmp_path / 'workdir'
  shutil.copytree(finished_workdir[0], copy)
  return copy


class Running:
  """A command in the background; its stderr lines, waited for by content."""

  def __init__(self, module, *args):
    env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1')
    self.proc = subprocess.Popen(
        [sys.executable, '-m', f'diffusion_distillation.{module}', *args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    self.lines, self._queue = [], queue.Queue()
    threading.Thread(target=self._read, daemon=True).start()

  def _read(self):
    for line in self.proc.stderr:
      self._queue.put(line)
    self._queue.put(None)

  def wait_for(self, text, timeout=120.):
    """Returns once a stderr line contains `text`; fails on exit or timeout."""
    deadline = time.time() + timeout
    while time.time() < deadline:
      try:
        line = self._queue.get(timeout=0.5)
      except queue.Empty:
        continue
      if line is None:
        break
      self.lines.append(line)
      if text in line:
        return
    self.proc.kill()
    pytest.fail(f'no {text!r} on stderr:\n' + ''.join(self.lines[-30:]))

  def finish(self, timeout=60.):
    """(exit status, the rest of stderr) after the command ends."""
    self.proc.wait(timeout)
    rest = []
    while (line := self._queue.get(timeout=10)) is not None:
      rest.append(line)
    self.lines.extend(rest)
    return self.proc.returncode, ''.join(self.lines)


def run_briefly(module, *args, timeout=120):
  """`run_module`, failing (not hanging) when the command does not stop."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1')
  try:
    return subprocess.run(
        [sys.executable, '-m', f'diffusion_distillation.{module}', *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    pytest.fail(f'{module} did not stop within {timeout} s')


def long_training_args(workdir):
  """`main` on the tiny model for far longer than a test waits, unsaved."""
  return [f'--config={DIGITS}', f'--workdir={workdir}', *override_flags({
      'train.num_train_steps': 1_000_000,
      'train.checkpoint_every_steps': 1_000_000,
      'train.checkpoint_every_secs': 100_000})]


TRAINING = 'base: 1000000 updates'  # logged once the stage's loop starts


# ---------------------------------------------------------------- config.json

@pytest.mark.parametrize('text', ['{"model": {"args"', '', '\x00\xff',
                                  '[1, 2]'])
def test_read_saved_config_names_the_file(tmp_path, text):
  path = tmp_path / 'config.json'
  path.write_bytes(text.encode('latin-1'))
  with pytest.raises(config_lib.ConfigError) as info:
    config_lib.read_saved_config(path)
  message = str(info.value)
  assert message.startswith(f'{path}: ') and '\n' not in message
  assert 'new --workdir' in message


@pytest.mark.parametrize('module', ['sample', 'evaluate', 'main'])
def test_a_corrupt_config_json_is_one_line_naming_it(module, workdir_copy,
                                                     tmp_path):
  config_json = workdir_copy / 'config.json'
  config_json.write_text(config_json.read_text()[:100])  # cut short
  before = snapshot(workdir_copy)
  args = {
      'sample': ['--num_steps=4', f'--output={tmp_path / "s.npz"}'],
      'evaluate': [],
      'main': [f'--config={DIGITS}', *override_flags()],
  }[module]
  result = run_module(module, f'--workdir={workdir_copy}', *args)
  assert_rejected(result, f'error: {config_json}: not valid JSON',
                  'new --workdir')
  assert snapshot(workdir_copy) == before


@pytest.mark.parametrize('deleted', ['arrays', 'state'])
def test_a_deleted_checkpoint_directory_is_one_line(deleted, workdir_copy,
                                                    tmp_path):
  """Was: TensorStore's nested status text, then a traceback of `Event loop
  is closed` per array that was still being read."""
  state = workdir_copy / 'checkpoints' / 'distill_2' / '4' / 'state'
  for path in ([state / 'd', state / 'ocdbt.process_0']
               if deleted == 'arrays' else [state]):
    shutil.rmtree(path)
  result = run_module('sample', f'--workdir={workdir_copy}', '--num_steps=2',
                      f'--output={tmp_path / "s.npz"}')
  lines = [l for l in result.stderr.splitlines() if not l.startswith(
      ('I1', 'W1', 'I0', 'W0'))]  # absl log lines
  assert len(lines) == 1 and result.returncode == 2, result.stderr[-3000:]
  expected = {
      'arrays': r'NOT_FOUND: cannot read \S+/distill_2/4/state/d/\w+ \(a '
                r'file of the checkpoint is missing or damaged\)',
      'state': "its 'state' item is missing",
  }[deleted]
  assert re.fullmatch(
      rf'error: reading checkpoint \S+/distill_2/4 failed: {expected}; rerun '
      'the training command to repair the stage', lines[0]), lines[0]


# ---------------------------------------------------------------- one run per workdir

HOLD_SCRIPT = """
import sys, time
from diffusion_distillation.pipeline import workdir_lock
with workdir_lock.hold(sys.argv[1]):
  print('holding', flush=True)
  time.sleep(600)
"""


def _hold_in_subprocess(workdir):
  proc = subprocess.Popen([sys.executable, '-c', HOLD_SCRIPT, str(workdir)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  return proc


def test_a_second_holder_stops_at_once_and_a_killed_ones_lock_is_taken(
    tmp_path):
  workdir = tmp_path / 'run'
  first = _hold_in_subprocess(workdir)
  try:
    assert first.stdout.readline().strip() == 'holding'
    second = _hold_in_subprocess(workdir)
    t0 = time.time()
    _, err = second.communicate(timeout=60)
    assert second.returncode != 0
    assert time.time() - t0 < 30
    last = err.strip().splitlines()[-1]
    assert 'WorkdirInUseError' in last
    assert (f'{workdir} is in use by process {first.pid} on host ' in last
            and 'wait for it or stop it' in last)
    first.send_signal(signal.SIGKILL)  # no clean-up: the OS drops the lock
    first.wait(30)
    third = _hold_in_subprocess(workdir)
    assert third.stdout.readline().strip() == 'holding'
    third.kill()
    third.wait(30)
  finally:
    first.kill()
    first.wait(30)


def test_two_mains_on_one_workdir_the_second_stops_naming_the_first(tmp_path):
  workdir = tmp_path / 'run'
  first = Running('main', *long_training_args(workdir))
  try:
    first.wait_for(TRAINING)
    before = snapshot(workdir / 'checkpoints')
    second = run_briefly('main', *long_training_args(workdir))
    assert_rejected(second, f'{workdir} is in use by process {first.proc.pid}',
                    'wait for it or stop it')
    assert snapshot(workdir / 'checkpoints') == before
  finally:
    first.proc.kill()
    first.finish()


class FakeClock:

  def __init__(self):
    self.now = 1000.

  def __call__(self):
    return self.now


def test_a_lease_refuses_a_live_holder_and_takes_over_a_stale_one(
    tmp_path, caplog):
  clock = FakeClock()
  args = dict(clock=clock, sleep=lambda s: None, stale_s=300.)
  first = workdir_lock.Lease(tmp_path, **args)
  first.acquire()
  clock.now += 200.
  assert first.beat()  # heartbeat at 1200
  clock.now += 250.
  second = workdir_lock.Lease(tmp_path, **args)
  with pytest.raises(workdir_lock.WorkdirInUseError) as info:
    second.acquire()  # 250 s since the last heartbeat: alive
  assert f'by process {os.getpid()} on host' in str(info.value)
  assert 'last heartbeat 250 s ago' in str(info.value)
  clock.now += 60.  # 310 s without a heartbeat: the holder died
  second.acquire()
  assert 'Taking over the lease' in caplog.text
  assert not first.beat()  # the old holder learns it lost the lease
  assert 'two runs now write this workdir' in caplog.text
  first.release()  # not its lease any more: left alone
  assert json.loads((tmp_path / 'lock.json').read_text())['token'] == (
      second.record['token'])
  second.release()
  assert not (tmp_path / 'lock.json').exists()


def test_of_two_leases_taken_at_once_the_first_writer_stops(tmp_path):
  clock = FakeClock()
  other = dict(host='other-host', pid=4321, started='then', token='theirs')

  def other_writes_meanwhile(seconds):
    # Another run also found no lease, and wrote its own after ours.
    del seconds
    (tmp_path / 'lock.json').write_text(
        json.dumps(dict(other, heartbeat=clock())))

  lease = workdir_lock.Lease(tmp_path, clock=clock,
                             sleep=other_writes_meanwhile)
  with pytest.raises(workdir_lock.WorkdirInUseError,
                     match='by process 4321 on host other-host .*took the '
                     'lease at the same time'):
    lease.acquire()
  lease.release()  # not ours: left alone
  assert json.loads((tmp_path / 'lock.json').read_text())['token'] == 'theirs'


def test_hold_on_a_url_keeps_a_lease_with_heartbeats(tmp_path):
  lease = tmp_path / 'lock.json'
  with workdir_lock.hold(tmp_path, local=False, heartbeat_s=0.05,
                         settle_s=0.):
    first = json.loads(lease.read_text())
    assert first['pid'] == os.getpid()
    deadline = time.time() + 10
    while json.loads(lease.read_text())['heartbeat'] == first['heartbeat']:
      assert time.time() < deadline, 'no heartbeat'
      time.sleep(0.05)
    with pytest.raises(workdir_lock.WorkdirInUseError):
      with workdir_lock.hold(tmp_path, local=False, settle_s=0.):
        pass
  assert not lease.exists()
  assert workdir_lock.is_local('/tmp/x') and not workdir_lock.is_local(
      'gs://bucket/x')


# ---------------------------------------------------------------- Ctrl-C

def test_ctrl_c_in_training_asks_for_a_checkpoint():
  previous = signal.getsignal(signal.SIGINT)
  previous_term = signal.getsignal(signal.SIGTERM)
  with preemption.handling():
    assert not preemption.preempted()
    os.kill(os.getpid(), signal.SIGINT)
    assert preemption.preempted()
    assert preemption.stop_message('base', 7) == (
        'interrupted: checkpoint saved at base step 7; rerun the same '
        'command to resume')
    assert preemption.Preempted('x').exit_status == 130
    assert signal.getsignal(signal.SIGINT) not in (previous,
                                                   signal.default_int_handler)
  assert signal.getsignal(signal.SIGINT) is previous
  with preemption.handling():
    assert not preemption.preempted()  # a new run forgets the old request
    os.kill(os.getpid(), signal.SIGTERM)
    assert preemption.stop_message('distill_4', 2).startswith(
        'preempted: checkpoint saved at distill_4 step 2;')
    assert preemption.Preempted('x').exit_status == 1
  assert signal.getsignal(signal.SIGTERM) == previous_term


def test_an_ignored_sigint_stays_ignored_in_training():
  previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
  try:
    with preemption.handling():
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.1)
      assert not preemption.preempted()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
  finally:
    signal.signal(signal.SIGINT, previous)


SECOND_CTRL_C = """
import os, signal, time
from diffusion_distillation.parallel import preemption
with preemption.handling():
  os.kill(os.getpid(), signal.SIGINT)
  time.sleep(0.2)
  assert preemption.preempted()
  os.kill(os.getpid(), signal.SIGINT)
  time.sleep(60)
print('still running')
"""


def test_a_second_ctrl_c_in_training_stops_at_once():
  t0 = time.time()
  result = subprocess.run([sys.executable, '-c', SECOND_CTRL_C],
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert result.returncode == 130, result.stderr
  assert time.time() - t0 < 30 and 'still running' not in result.stdout
  assert 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(
      'interrupted: stopped at once, without a checkpoint')


def test_ctrl_c_in_training_saves_a_checkpoint_and_ends_in_one_line(tmp_path):
  workdir = tmp_path / 'run'
  run = Running('main', *long_training_args(workdir))
  run.wait_for(TRAINING)
  run.proc.send_signal(signal.SIGINT)
  status, stderr = run.finish()
  assert status == 130, stderr[-3000:]
  assert 'Traceback' not in stderr, stderr
  last = stderr.strip().splitlines()[-1]
  assert last.startswith('interrupted: checkpoint saved at base step ')
  step = int(last.split(' step ')[1].split(';')[0])
  assert step >= 1
  assert (workdir / 'checkpoints' / 'base' / str(step)).is_dir()


def test_signals_inside_a_long_compiled_call_are_answered_at_once(tmp_path):
  """Was: with 100 substeps per call, a Ctrl-C and a second one 40 s into
  the first call had no reaction for over 120 s. Python runs no handler
  while the main thread is inside a compiled call (or compiling one)."""
  run = Running('main', *long_training_args(tmp_path / 'run'),
                '--config.train.substeps=100000')  # one call: all of them
  run.wait_for(TRAINING)
  time.sleep(1)  # inside the first call (compiling it, or running it)
  run.proc.send_signal(signal.SIGINT)
  started = time.time()
  run.wait_for('Ctrl-C: saving a checkpoint when the current compiled call',
               timeout=5)
  run.proc.send_signal(signal.SIGINT)
  status, stderr = run.finish(timeout=5)
  seconds = time.time() - started
  assert status == 130, stderr[-3000:]
  assert 'Traceback' not in stderr
  assert stderr.strip().splitlines()[-1].startswith(
      'interrupted: stopped at once, without a checkpoint')
  print(f'two Ctrl-C inside a compiled call: ended {seconds:.1f} s after the '
        'first')


@pytest.mark.parametrize('module', ['sample', 'evaluate'])
def test_ctrl_c_outside_training_ends_in_one_line(module, workdir_copy,
                                                  tmp_path):
  many = ['--num_samples=1000000', '--batch_size=8']
  if module == 'sample':
    args = ['--num_steps=4', f'--output={tmp_path / "s.npz"}', *many]
    started = 'sampling 1000000 images'  # the student is loaded
  else:
    args = ['--teacher_steps=none', *many]
    started = 'rows, 1000000 samples each'
  run = Running(module, f'--workdir={workdir_copy}', *args)
  run.wait_for(started)
  time.sleep(1)
  run.proc.send_signal(signal.SIGINT)
  status, stderr = run.finish()
  assert status == 130, stderr[-3000:]
  assert 'Traceback' not in stderr, stderr
  assert stderr.strip().splitlines()[-1] == 'interrupted'


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize('module', ['main', 'sample', 'evaluate'])
def test_a_workdir_that_is_a_file(module, tmp_path):
  path = tmp_path / 'not_a_dir'
  path.write_text('a file')
  args = {'main': [f'--config={DIGITS}'],
          'sample': ['--num_steps=4', f'--output={tmp_path / "s.npz"}'],
          'evaluate': []}[module]
  result = run_module(module, f'--workdir={path}', *args)
  assert_rejected(result, f'error: --workdir={path} is a file, not a '
                  'directory')
  assert path.read_text() == 'a file'


def test_main_stops_before_training_in_a_workdir_it_cannot_write():
  workdir = os.path.join(_unwritable_dir(), 'dd_workdir')
  t0 = time.time()
  result = run_module('main', f'--config={DIGITS}', f'--workdir={workdir}',
                      *override_flags())
  assert_rejected(result, f'--workdir={workdir}: cannot write there')
  assert 'base:' not in result.stderr  # no stage started
  assert time.time() - t0 < 60


def test_evaluate_checks_it_can_write_before_sampling(workdir_copy):
  os.symlink(_unwritable_dir(), workdir_copy / 'eval')
  result = run_module('evaluate', f'--workdir={workdir_copy}',
                      '--num_samples=16')
  assert_rejected(result, f'{workdir_copy / "eval"}: cannot write there')
  assert 'rows,' not in result.stderr and 'steps:' not in result.stderr


def test_the_write_probe_reports_a_failing_write(tmp_path, monkeypatch):
  def refuse(self, *args, **kwargs):
    raise PermissionError(13, 'Permission denied')

  monkeypatch.setattr(type(workdir_lock.epath.Path(tmp_path)), 'write_text',
                      refuse)
  with pytest.raises(workdir_lock.WorkdirAccessError,
                     match=r': cannot write there \(Permission denied\)$'):
    workdir_lock.check_writable(tmp_path / 'eval')


def test_sample_rejects_an_unwritable_output_before_sampling(workdir_copy):
  output = os.path.join(_unwritable_dir(), 'dd_out', 's.npz')
  result = run_module('sample', f'--workdir={workdir_copy}', '--num_steps=4',
                      f'--output={output}')
  assert_rejected(result, 'the directory of --output', 'cannot write there')


def test_sample_rejects_an_output_that_is_a_directory(workdir_copy, tmp_path):
  output = tmp_path / 'out.npz'
  output.mkdir()
  result = run_module('sample', f'--workdir={workdir_copy}', '--num_steps=4',
                      f'--output={output}')
  assert_rejected(result, f'--output={output} is a directory')
  assert list(output.iterdir()) == []


CONFIG_FILES = {
    'syntax': ('def get_config(:\n  pass\n', 'syntax error at line 1'),
    'no_get_config': ('X = 1\n', 'the file defines no get_config() function'),
    'name_error': ('def get_config():\n  return undefined\n',
                   "NameError at line 2: name 'undefined' is not defined"),
    'value_error': ('def get_config():\n  raise ValueError("no such data")\n',
                    'ValueError at line 2: no such data'),
}


@pytest.mark.parametrize('case', sorted(CONFIG_FILES))
def test_a_broken_config_file_is_one_line_naming_it(case, tmp_path):
  text, expected = CONFIG_FILES[case]
  path = tmp_path / f'{case}.py'
  path.write_text(text)
  result = run_module('main', f'--config={path}',
                      f'--workdir={tmp_path / "run"}')
  assert_rejected(result, f'error: --config={path}: {expected}')
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert not (tmp_path / 'run').exists()


def test_a_mistyped_override_among_several_is_named_alone(tmp_path):
  result = run_module('main', f'--config={DIGITS}',
                      f'--workdir={tmp_path / "run"}',
                      '--config.train.batch_size=8',
                      '--config.train.batch_sise=3', '--config.seed=2')
  assert_rejected(result)
  assert result.stderr.strip() == (
      "error: --config.train.batch_sise: the config has no field "
      "'batch_sise'; did you mean 'batch_size'?")


@pytest.mark.parametrize('field,value', [
    ('train.learning_rate', float('inf')), ('train.grad_clip', float('inf')),
    ('distillation.learning_rate', float('-inf')),
    ('train.weight_decay', float('nan')), ('train.adam_beta2', float('nan'))])
def test_non_finite_training_numbers_are_refused(field, value):
  config = tiny_config(**{field.replace('.', '__'): value})
  with pytest.raises(config_lib.ConfigError,
                     match=rf'^config\.{field}: must be a finite number'):
    config_lib.validate_config(config)


def test_main_refuses_an_infinite_learning_rate(tmp_path):
  result = run_briefly('main', f'--config={DIGITS}',
                       f'--workdir={tmp_path / "run"}',
                       '--config.train.learning_rate=inf')
  assert_rejected(result, 'error: config.train.learning_rate: must be a '
                  'finite number, got inf')
  assert not (tmp_path / 'run').exists()
