"""A failure on one process of a multi-process run ends every process.

Two processes on localhost (one host CPU device each, gloo collectives) run
the CLI as a cluster would start them. A busy workdir, an unwritable one (for
both, or for process 1 only), a config error on one process only, processes
given other flags, a coordinator port in use, two processes with one id, and
either process killed (SIGKILL) or process 0 frozen (SIGSTOP) in the middle
of a stage: every process exits non-zero well within 60 s, its last line the
one-line error, no traceback, no C++ stack trace, no JAX distributed-service
abort. And an accelerator that launch/run.sh found but JAX cannot use stops
in one line instead of training on the CPU.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from helpers import free_port
from helpers import ProcessGroup
from helpers import PYTHON
from helpers import REPO

pytestmark = [pytest.mark.slow, pytest.mark.processes]

TIMEOUT_S = 20  # --process_timeout: a silent process ends the run after this
LIMIT_S = 60  # what every process must exit within
TINY = ['--config=digits', '--config.train.batch_size=8',
        '--config.model.args.ch_mult=(1,)', '--config.model.args.emb_ch=32',
        '--config.model.args.attn_resolutions=()',
        '--config.model.eval_sampling_num_steps=4',
        '--config.distillation.steps_per_iter=2',
        '--config.eval.run_after_training=false',
        '--config.train.log_loss_every_steps=10',
        f'--process_timeout={TIMEOUT_S}']
NOISE = ('Traceback', 'Check failure stack trace', 'Fatal Python error',
         'Terminating process because', '[Gloo]')
HOLD_SCRIPT = """
import sys, time
from diffusion_distillation.pipeline import workdir_lock
with workdir_lock.hold(sys.argv[1]):
  print('holding', flush=True)
  time.sleep(300)
"""


def _start(tmp_path, workdir, extra=(None,) * 3, steps=4, ids=(0, 1),
           address=None, prefix=(None,) * 3):
  """Processes of one run; `extra[i]`: more arguments for process i,
  `prefix[i]`: a command it runs under; `ids`: their --process_id."""
  group = ProcessGroup('run', tmp_path)
  address = address or f'127.0.0.1:{free_port()}'
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1',
             XLA_FLAGS='--xla_force_host_platform_device_count=1')
  for i, process_id in enumerate(ids):
    group.start([*(prefix[i] or ()), PYTHON, '-m',
                 'diffusion_distillation.main', *TINY, f'--workdir={workdir}',
                 f'--config.train.num_train_steps={steps}',
                 f'--coordinator_address={address}',
                 f'--num_processes={len(ids)}', f'--process_id={process_id}',
                 *(extra[i] or ())], env)
  return group


def _wait_for_updates(group):
  deadline = time.time() + 120
  while not all('stage 1/3 base: step 10/' in log for log in group.logs()):
    assert time.time() < deadline and all(
        p.poll() is None for p in group.procs), group.tails()
    time.sleep(0.5)


def _ends(group, started):
  """Waits (at most LIMIT_S after `started`); (seconds, last lines)."""
  try:
    for proc in group.procs:
      proc.wait(timeout=max(1., started + LIMIT_S - time.time()))
  except subprocess.TimeoutExpired:
    group.kill()
    raise AssertionError('a process was still running after '
                         f'{LIMIT_S} s:\n{group.tails()}') from None
  seconds = time.time() - started
  group.kill()
  lasts = []
  for proc, log in zip(group.procs, group.logs()):
    assert proc.returncode not in (0, None), group.tails()
    for noise in NOISE:
      assert noise not in log, group.tails()
    errors = [l for l in log.splitlines() if l.startswith('error: ')]
    assert len(errors) == 1, group.tails()
    assert log.strip().splitlines()[-1] == errors[0], group.tails()
    lasts.append(errors[0])
  return seconds, lasts


def test_a_busy_workdir_ends_both_processes_with_its_line(tmp_path):
  workdir = tmp_path / 'busy'
  holder = subprocess.Popen([sys.executable, '-c', HOLD_SCRIPT, str(workdir)],
                            stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, JAX_PLATFORMS='cpu'))
  try:
    assert holder.stdout.readline().strip() == 'holding'
    started = time.time()
    seconds, lines = _ends(_start(tmp_path, workdir), started)
  finally:
    holder.kill()
    holder.wait()
  assert lines[0] == lines[1] and f'{workdir} is in use by process ' \
      f'{holder.pid}' in lines[0]
  print(f'busy workdir: both ended in {seconds:.1f} s: {lines[0]}')


def test_an_unwritable_workdir_ends_both_processes(tmp_path):
  workdir = '/proc/dd_workdir'  # procfs: even root cannot write there
  seconds, lines = _ends(_start(tmp_path, workdir), time.time())
  assert lines[0] == lines[1] and workdir in lines[0], lines
  print(f'unwritable workdir: both ended in {seconds:.1f} s: {lines[0]}')


def test_a_config_error_on_one_process_ends_both(tmp_path):
  group = _start(tmp_path, tmp_path / 'w',
                 extra=(None, ['--config.train.learning_rate=-1']))
  seconds, lines = _ends(group, time.time())
  assert lines[0] == lines[1] == (
      'error: config.train.learning_rate: must be number > 0, got -1.0'), lines
  assert not (tmp_path / 'w').exists()
  print(f'config error on process 1: both ended in {seconds:.1f} s')


@pytest.mark.parametrize('killed', [1, 0])  # 0: the coordinator's process
def test_a_killed_process_ends_the_other_naming_it(tmp_path, killed):
  group = _start(tmp_path, tmp_path / 'w', steps=100_000)
  _wait_for_updates(group)
  group.procs[killed].send_signal(signal.SIGKILL)
  started, other = time.time(), group.procs[1 - killed]
  try:
    other.wait(timeout=LIMIT_S)
  except subprocess.TimeoutExpired:
    group.kill()
    raise AssertionError(f'process {1 - killed} still running {LIMIT_S} s '
                         f'after process {killed} was killed:\n'
                         f'{group.tails()}') from None
  seconds = time.time() - started
  group.kill()
  log = group.logs()[1 - killed]
  assert other.returncode == 1, group.tails()
  for noise in NOISE:
    assert noise not in log, group.tails()
  last = log.strip().splitlines()[-1]
  assert last.startswith(f'error: process {killed} of 2 stopped '
                         'responding'), last
  print(f'process {killed} killed: the other ended {seconds:.1f} s later: '
        f'{last}')


def test_a_process_killed_in_a_save_is_named_not_the_save(tmp_path):
  worker = [PYTHON, os.path.join(REPO, 'tests', 'dying_save_worker.py')]
  group = _start(tmp_path, tmp_path / 'w', prefix=(None, worker))
  group.procs[1].wait(timeout=120)
  started = time.time()
  try:
    group.procs[0].wait(timeout=LIMIT_S)
  finally:
    group.kill()
  log = group.logs()[0]
  for noise in NOISE:
    assert noise not in log, group.tails()
  last = log.strip().splitlines()[-1]
  assert group.procs[0].returncode == 1, group.tails()
  assert last.startswith('error: process 1 of 2 stopped responding'), last
  print(f'process 1 killed in a save: process 0 ended '
        f'{time.time() - started:.1f} s later: {last}')


def test_a_frozen_coordinator_process_ends_the_other_then_itself(tmp_path):
  """SIGSTOP on process 0, then SIGCONT: each ends in one line, the other
  within --process_timeout, the thawed one at once (no JAX abort)."""
  group = _start(tmp_path, tmp_path / 'w', steps=100_000)
  _wait_for_updates(group)
  frozen, other = group.procs
  frozen.send_signal(signal.SIGSTOP)
  started = time.time()
  try:
    other.wait(timeout=LIMIT_S)
    seconds = time.time() - started
  finally:
    frozen.send_signal(signal.SIGCONT)
  _, lines = _ends(group, time.time())
  assert lines[1] == ('error: process 0 of 2 stopped responding (no heartbeat '
                      f'for {TIMEOUT_S} s: killed, frozen, out of memory, or '
                      'its host went down); every process stops'), lines
  assert lines[0].startswith('error: process 1 of 2 stopped responding'), lines
  assert [p.returncode for p in group.procs] == [1, 1]
  print(f'process 0 frozen: process 1 ended {seconds:.1f} s later; thawed, '
        f'process 0 ended with: {lines[0]}')


@pytest.mark.parametrize('flag, expected', [
    ('--config.train.batch_size=16', 'error: process 1 runs another config '
     'than process 0: config.train.batch_size is 16 there but 8 on process 0; '
     'start every process with the same command'),
    ('--workdir={other}', 'error: process 1 runs in --workdir={other} but '
     'process 0 in --workdir={workdir}; start every process with the same '
     'command'),
])
def test_processes_given_other_flags_end_naming_the_difference(
    tmp_path, flag, expected):
  workdir, other = tmp_path / 'w', tmp_path / 'other'
  group = _start(tmp_path, workdir,
                 extra=(None, [flag.format(other=other)]))
  seconds, lines = _ends(group, time.time())
  assert lines == [expected.format(other=other, workdir=workdir)] * 2, lines
  assert not workdir.exists() and not other.exists()
  print(f'{flag}: both ended in {seconds:.1f} s')


def test_a_workdir_one_process_cannot_write_ends_both(tmp_path):
  """Process 1 sees the workdir through a read-only mount (its own mount
  namespace, as another host's missing or read-only mount would be)."""
  if subprocess.run(['unshare', '-m', 'true'], check=False).returncode:
    pytest.skip('a read-only mount for one process needs unshare -m (root)')
  workdir = tmp_path / 'w'
  workdir.mkdir()
  read_only = ['unshare', '-m', 'sh', '-c',
               f'mount --bind {workdir} {workdir} && '
               f'mount -o remount,bind,ro {workdir} && exec "$@"', 'sh']
  group = _start(tmp_path, workdir, prefix=(None, read_only))
  seconds, lines = _ends(group, time.time())
  assert lines == [f'error: --workdir={workdir}: cannot write there '
                   '(Read-only file system) (on process 1 of 2)'] * 2, lines
  assert os.listdir(workdir) == []
  print(f'read-only for process 1: both ended in {seconds:.1f} s')


@pytest.mark.parametrize('case', ['port in use', 'same process id'])
def test_a_bad_start_names_its_cause(tmp_path, case):
  port = free_port()
  with socket.socket() as taken:
    if case == 'port in use':
      taken.bind(('127.0.0.1', port))
      taken.listen()
      ids, expected = (0, 1), (
          f'error: the coordinator port {port} is already in use on this host')
    else:
      ids, expected = (0, 1, 1), (
          'error: another process on this host was started as process 1 of '
          f'the run coordinated on port {port}: give each process its own '
          '--process_id')
    group = _start(tmp_path, tmp_path / 'w', address=f'127.0.0.1:{port}',
                   ids=ids, extra=[['--process_timeout=5']] * len(ids))
    seconds, lines = _ends(group, time.time())
  assert any(line.startswith(expected) for line in lines), lines
  others = [line for line in lines if not line.startswith(expected)]
  assert all(' did not all join within 5 s' in line for line in others)
  assert not (tmp_path / 'w').exists()
  print(f'{case}: every process ended in {seconds:.1f} s: {lines}')


@pytest.mark.parametrize('env, expected', [
    # run.sh found a GPU, but this JAX has no CUDA backend: it would fall
    # back to the CPU.
    ({'DD_ACCELERATOR': 'cuda'}, "error: DD_ACCELERATOR=cuda (the hardware "
     "launch/run.sh found) but JAX sees only CPU devices; install JAX for it "
     "(pip install 'jax[cuda12]')"),
    # ... and with JAX_PLATFORMS=cuda as run.sh sets it, JAX itself fails.
    ({'DD_ACCELERATOR': 'cuda', 'JAX_PLATFORMS': 'cuda'},
     'error: JAX cannot start the cuda backend ('),
])
def test_an_accelerator_jax_cannot_use_stops_in_one_line(tmp_path, env,
                                                        expected):
  proc = subprocess.run(
      [PYTHON, '-m', 'diffusion_distillation.main', *TINY,
       f'--workdir={tmp_path / "w"}'], cwd=REPO, capture_output=True,
      text=True, timeout=120, env={**os.environ, 'JAX_PLATFORMS': 'cpu', **env})
  assert proc.returncode == 2, proc.stderr
  assert 'Traceback' not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith(expected), (
      proc.stderr)
  assert not (tmp_path / 'w').exists()


def test_sigterm_stops_both_processes_at_one_step_with_a_checkpoint(tmp_path):
  """Preemption as a scheduler sends it, to every task: the processes agree
  on the stop every few seconds (`preemption.Poll`), not after every call."""
  workdir = tmp_path / 'w'
  group = _start(tmp_path, workdir, steps=100_000)
  _wait_for_updates(group)
  for proc in group.procs:
    proc.send_signal(signal.SIGTERM)
  for proc in group.procs:
    proc.wait(timeout=LIMIT_S)
  lines = [log.strip().splitlines()[-1] for log in group.logs()]
  group.kill()
  assert [p.returncode for p in group.procs] == [1, 1], group.tails()
  assert lines[0] == lines[1] and lines[0].startswith(
      'preempted: checkpoint saved at base step '), lines
  step = lines[0].split('base step ')[1].split(';')[0]
  assert (workdir / 'checkpoints' / 'base' / step).is_dir()


def test_a_process_whose_peers_never_come_stops_in_one_line(tmp_path):
  started = time.time()
  proc = subprocess.run(
      [PYTHON, '-m', 'diffusion_distillation.main', *TINY[:-1],
       '--process_timeout=5', f'--workdir={tmp_path / "w"}',
       f'--coordinator_address=127.0.0.1:{free_port()}', '--num_processes=2',
       '--process_id=0'], cwd=REPO, capture_output=True, text=True,
      timeout=LIMIT_S, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert proc.returncode == 2 and time.time() - started < 30, proc.stderr
  for noise in NOISE:
    assert noise not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
      'error: the processes of this run (flags) did not all join within 5 s; '
      'check that every process was started, with the same coordinator '
      'address and its own process id')
