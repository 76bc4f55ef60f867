"""Tests for launch/run.sh and launch/tpu_vm.sh, with stand-in executables.

Nothing here touches the network, creates a real virtualenv or runs pip:
`gcloud`, `nvidia-smi` and the Pythons that run.sh calls are small scripts
in tmp_path that record how they were called.
"""

import json
import os
import re
import shlex
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.heavy  # processes: not the fast tier

REPO = Path(__file__).resolve().parents[1]
RUN_SH = REPO / 'launch' / 'run.sh'
TPU_VM_SH = REPO / 'launch' / 'tpu_vm.sh'

# Records argv (one JSON line per call) to $FAKE_LOG. As gcloud it also keeps
# a copy of what `scp` sends and fails `describe` unless FAKE_TPU_EXISTS=1.
# As a base interpreter (`python3 -m venv DIR`) it creates a venv whose
# bin/python is itself; as a venv python it records pip / main calls.
_RECORDER = r'''#!{python}
import json, os, shutil, stat, sys
name = os.path.basename(sys.argv[0])
with open(os.environ['FAKE_LOG'], 'a') as f:
  f.write(json.dumps([name] + sys.argv[1:]) + '\n')
args = sys.argv[1:]
if name == 'gcloud':
  if args[3:4] == ['describe']:
    sys.exit(0 if os.environ.get('FAKE_TPU_EXISTS') == '1' else 1)
  if args[3:4] == ['scp']:
    shutil.copy(args[4], os.environ['FAKE_LOG'] + '.scp')
elif args[:2] == ['-m', 'venv']:
  bin_dir = os.path.join(args[2], 'bin')
  os.makedirs(bin_dir)
  shutil.copy(sys.argv[0], os.path.join(bin_dir, 'python'))
  open(os.path.join(bin_dir, 'pip'), 'w').close()
'''


def _write_exe(path, text):
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IEXEC)
  return path


@pytest.fixture
def fake(tmp_path):
  """A bin dir for stand-ins and a log of their calls."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  log = tmp_path / 'calls.jsonl'
  recorder = _RECORDER.format(python=sys.executable)
  _write_exe(bin_dir / 'gcloud', recorder)
  _write_exe(bin_dir / 'fake-python3', recorder)

  class Fake:
    pass

  f = Fake()
  f.bin, f.log, f.tmp, f.recorder = bin_dir, log, tmp_path, recorder
  f.calls = lambda: ([json.loads(line) for line in log.read_text().splitlines()]
                     if log.exists() else [])
  return f


def _env(fake, **extra):
  """A clean environment: no TPU_*/DD_* settings leak in from the caller."""
  env = {
      'PATH': f'{fake.bin}{os.pathsep}{os.environ["PATH"]}',
      'HOME': str(fake.tmp),
      'FAKE_LOG': str(fake.log),
      'LC_ALL': 'C',
  }
  env.update({k: str(v) for k, v in extra.items()})
  return env


def _run(script, fake, *args, **env):
  return subprocess.run(['bash', str(script), *args], env=_env(fake, **env),
                        capture_output=True, text=True, timeout=30,
                        check=False)


# ---------------------------------------------------------------- tpu_vm.sh

_TPU_ENV = dict(TPU_NAME='dd-tpu', ZONE='us-central2-b',
                ACCELERATOR_TYPE='v4-32', CONFIG='configs/cifar10_distill.py',
                WORKDIR='gs://bucket/run')
_GC = ['gcloud', 'compute', 'tpus', 'tpu-vm']


def _remote_args(command):
  """The argv run.sh receives from a recorded `run` remote command."""
  match = re.fullmatch(
      r'cd ~/diffusion_distillation && DD_ACCELERATOR=tpu nohup bash '
      r'launch/run.sh (.*) > ~/dd\.log 2>&1 < /dev/null &', command)
  assert match, command
  # Let bash (the remote shell) parse the quoted words.
  out = subprocess.run(['bash', '-c', f'printf "%s\\0" {match.group(1)}'],
                       capture_output=True, text=True, check=True).stdout
  return out.split('\0')[:-1]


def test_tpu_vm_all(fake):
  extra = ['--config.train.batch_size=256', 'two words', "it's", '$HOME',
           '--note=a;b&&c']
  proc = _run(TPU_VM_SH, fake, 'all', '--', *extra, **_TPU_ENV)
  assert proc.returncode == 0, proc.stderr
  calls = fake.calls()
  assert [c[:5] for c in calls] == [
      _GC + ['describe'], _GC + ['create'], _GC + ['scp'], _GC + ['ssh'],
      _GC + ['ssh'], _GC + ['ssh']]
  assert calls[1] == _GC + ['create', 'dd-tpu', '--zone=us-central2-b',
                            '--accelerator-type=v4-32',
                            '--version=tpu-ubuntu2204-base']
  scp = calls[2]
  assert scp[5].endswith('/dd_code.tar.gz')  # a local temporary file
  assert scp[6:] == ['dd-tpu:~/dd_code.tar.gz', '--zone=us-central2-b',
                     '--worker=all']
  assert not Path(scp[5]).exists()  # cleaned up
  assert calls[3] == _GC + [
      'ssh', 'dd-tpu', '--zone=us-central2-b', '--worker=all',
      '--command=mkdir -p ~/diffusion_distillation && tar -xzf '
      '~/dd_code.tar.gz -C ~/diffusion_distillation && rm -f '
      '~/dd_code.tar.gz']
  run = calls[4]
  assert run[:8] == _GC + ['ssh', 'dd-tpu', '--zone=us-central2-b',
                           '--worker=all']
  assert run[8].startswith('--command=') and len(run) == 9
  assert _remote_args(run[8][len('--command='):]) == [
      '--config=configs/cifar10_distill.py', '--workdir=gs://bucket/run',
      *extra]
  assert calls[5] == _GC + ['ssh', 'dd-tpu', '--zone=us-central2-b',
                            '--worker=0',
                            '--command=tail -n 200 -F ~/dd.log']
  # One line per phase on stderr.
  assert [line.split(':')[0] for line in proc.stderr.splitlines()] == [
      '[tpu_vm.sh] create', '[tpu_vm.sh] copy', '[tpu_vm.sh] run',
      '[tpu_vm.sh] logs']

  # The tarball holds the code but not the venvs (CI's .venv313 too), git
  # data or caches.
  with tarfile.open(str(fake.log) + '.scp') as tar:
    names = {n[2:] if n.startswith('./') else n for n in tar.getnames()}
  assert {'launch/run.sh', 'launch/tpu_vm.sh', 'setup.cfg'} <= names
  assert not any(part in {'.git', '__pycache__', '.pytest_cache'} or
                 part.startswith('.venv')
                 for n in names for part in n.split('/'))


def test_tpu_vm_options_project_and_existing_vm(fake):
  proc = _run(TPU_VM_SH, fake, '--name=other', '--zone=europe-west4-a',
              '--accelerator-type=v5litepod-8', '--project=my-proj', 'create',
              FAKE_TPU_EXISTS='1', **_TPU_ENV)
  assert proc.returncode == 0, proc.stderr
  assert fake.calls() == [_GC + ['describe', 'other', '--zone=europe-west4-a',
                                 '--project=my-proj', '--format=value(state)']]
  assert 'already exists' in proc.stderr

  fake.log.unlink()
  proc = _run(TPU_VM_SH, fake, '--accelerator-type=v5litepod-8', 'create',
              CREATE_FLAGS='--spot --network=n1', PROJECT='p2', **_TPU_ENV)
  assert proc.returncode == 0, proc.stderr
  assert fake.calls()[1] == _GC + [
      'create', 'dd-tpu', '--zone=us-central2-b', '--project=p2',
      '--accelerator-type=v5litepod-8', '--version=v2-alpha-tpuv5-lite',
      '--spot', '--network=n1']

  fake.log.unlink()
  proc = _run(TPU_VM_SH, fake, 'create', TPU_VERSION='v2-alpha-tpuv6e',
              **_TPU_ENV)
  assert proc.returncode == 0, proc.stderr
  assert fake.calls()[1][-1] == '--version=v2-alpha-tpuv6e'


def test_tpu_vm_run_and_delete(fake):
  env = dict(_TPU_ENV, WORKDIR='/tmp/local dir')
  proc = _run(TPU_VM_SH, fake, '--remote-dir=dd code', 'run', **env)
  assert proc.returncode == 0, proc.stderr
  (call,) = fake.calls()
  command = call[-1][len('--command='):]
  assert command.startswith(r'cd ~/dd\ code && ')
  assert 'not a gs:// path' in proc.stderr
  command = command.replace(r'cd ~/dd\ code', 'cd ~/diffusion_distillation')
  assert _remote_args(command) == ['--config=configs/cifar10_distill.py',
                                   '--workdir=/tmp/local dir']

  fake.log.unlink()
  proc = _run(TPU_VM_SH, fake, 'delete', **_TPU_ENV)
  assert proc.returncode == 0, proc.stderr
  assert fake.calls() == [_GC + ['delete', 'dd-tpu', '--zone=us-central2-b',
                                 '--quiet']]


@pytest.mark.parametrize('subcommand, unset, missing', [
    ('create', ['ACCELERATOR_TYPE'], ['ACCELERATOR_TYPE']),
    ('run', ['WORKDIR', 'CONFIG'], ['CONFIG', 'WORKDIR']),
    ('all', ['ZONE'], ['ZONE']),
    ('logs', ['TPU_NAME'], ['TPU_NAME']),
])
def test_tpu_vm_missing_setting(fake, subcommand, unset, missing):
  env = {k: v for k, v in _TPU_ENV.items() if k not in unset}
  proc = _run(TPU_VM_SH, fake, subcommand, **env)
  assert proc.returncode != 0
  assert f"missing required setting(s) for '{subcommand}'" in proc.stderr
  for var in missing:
    assert var in proc.stderr
  assert fake.calls() == []


def test_tpu_vm_usage_errors(fake):
  proc = _run(TPU_VM_SH, fake, **_TPU_ENV)
  assert proc.returncode != 0 and 'no subcommand' in proc.stderr
  proc = _run(TPU_VM_SH, fake, 'launch', **_TPU_ENV)
  assert proc.returncode != 0 and "unknown option or subcommand 'launch'" in (
      proc.stderr)
  proc = _run(TPU_VM_SH, fake, 'delete', 'extra', **_TPU_ENV)
  assert proc.returncode != 0 and 'takes no arguments' in proc.stderr
  proc = _run(TPU_VM_SH, fake, '--help')
  assert proc.returncode == 0 and 'Subcommands:' in proc.stdout
  assert fake.calls() == []


# ------------------------------------------------------------------- run.sh


def _dry_commands(stdout):
  """argv lists of the '+ ' lines a dry run prints."""
  return [shlex.split(line[2:]) for line in stdout.splitlines()
          if line.startswith('+ ')]


def _no_gpu(fake):
  _write_exe(fake.bin / 'nvidia-smi', '#!/bin/sh\nexit 9\n')


@pytest.mark.parametrize('accelerator, spec', [
    ('cpu', f'{REPO}[tfds]'), ('cuda', f'{REPO}[cuda,tfds]'),
    ('tpu', f'{REPO}[tpu,tfds]')])
def test_run_sh_dry_run_fresh(fake, accelerator, spec):
  venv = fake.tmp / 'venv'
  args = ['--config=configs/cifar10_distill.py', '--workdir=/tmp/w d', "it's"]
  proc = _run(RUN_SH, fake, *args, DD_DRY_RUN='1', DD_VENV=venv,
              DD_ACCELERATOR=accelerator)
  assert proc.returncode == 0, proc.stderr
  py = str(venv / 'bin' / 'python')
  commands = _dry_commands(proc.stdout)
  assert commands[:3] == [
      ['python3', '-m', 'venv', str(venv)],
      [py, '-m', 'pip', 'install', '--quiet', '--disable-pip-version-check',
       '--upgrade', 'pip'],
      [py, '-m', 'pip', 'install', '--quiet', '--disable-pip-version-check',
       '-e', spec]]
  assert commands[3][:2] == ['write', str(venv / '.dd_install_stamp')]
  assert commands[4] == [py, '-m', 'diffusion_distillation.main', *args]
  assert len(commands) == 5
  assert f'accelerator: {accelerator} (from DD_ACCELERATOR)' in proc.stderr
  assert len(proc.stderr.splitlines()) == 4  # one line per phase
  assert not venv.exists() and fake.calls() == []


@pytest.mark.parametrize('setup, env, expected', [
    ('accel0', {}, 'tpu'),
    ('vfio', {}, 'tpu'),
    (None, {'TPU_ACCELERATOR_TYPE': 'v4-8'}, 'tpu'),
    (None, {'TPU_NAME': 'x'}, 'tpu'),
    ('gpu', {}, 'cuda'),
    ('gpu+vfio', {}, 'cuda'),  # CUDA first: GPU hosts have vfio devices too
    (None, {}, 'cpu'),
    ('accel0', {'DD_ACCELERATOR': 'cpu'}, 'cpu'),
    ('gpu', {'DD_ACCELERATOR': 'tpu'}, 'tpu'),
])
def test_run_sh_detection(fake, setup, env, expected):
  devfs = fake.tmp / 'dev'
  devfs.mkdir()
  (devfs / 'vfio').mkdir()
  (devfs / 'vfio' / 'vfio').touch()  # present on non-TPU hosts too
  if setup == 'accel0':
    (devfs / 'accel0').touch()
  elif setup in ('vfio', 'gpu+vfio'):
    (devfs / 'vfio' / '0').touch()
  if setup and setup.startswith('gpu'):
    _write_exe(fake.bin / 'nvidia-smi', '#!/bin/sh\nexit 0\n')
  else:
    _no_gpu(fake)
  proc = _run(RUN_SH, fake, DD_DRY_RUN='1', DD_VENV=fake.tmp / 'venv',
              DD_DEVFS=devfs, **env)
  assert proc.returncode == 0, proc.stderr
  how = 'from DD_ACCELERATOR' if 'DD_ACCELERATOR' in env else 'detected'
  assert f'accelerator: {expected} ({how})' in proc.stderr
  spec = {'cpu': str(REPO), 'cuda': f'{REPO}[cuda]', 'tpu': f'{REPO}[tpu]'}
  assert _dry_commands(proc.stdout)[2][-1] == spec[expected]


@pytest.mark.parametrize('args, env, spec', [
    (['--config=configs/digits.py', '--workdir=w'], {}, str(REPO)),
    (['--config=configs/digits.py', '--workdir=gs://b/w'], {},
     f'{REPO}[gcs]'),
    (['--config=configs/imagenet64_distill.py',
      '--config.distillation.teacher_checkpoint_path=gs://b/t'], {},
     f'{REPO}[tfds,gcs]'),
    (['--config=configs/digits.py'], {'DD_EXTRAS': 'gcs,tfds,gcs'},
     f'{REPO}[gcs,tfds]'),
])
def test_run_sh_installs_the_extras_a_command_needs(fake, args, env, spec):
  """TFDS only for the TFDS data sets, gcsfs only for gs:// paths."""
  proc = _run(RUN_SH, fake, *args, DD_DRY_RUN='1', DD_VENV=fake.tmp / 'venv',
              DD_ACCELERATOR='cpu', **env)
  assert proc.returncode == 0, proc.stderr
  assert _dry_commands(proc.stdout)[2][-1] == spec


def test_run_sh_bad_accelerator(fake):
  proc = _run(RUN_SH, fake, DD_DRY_RUN='1', DD_VENV=fake.tmp / 'venv',
              DD_ACCELERATOR='gpu')
  assert proc.returncode != 0
  assert ('DD_ACCELERATOR must be tpu, cuda, cuda12, cuda13 or cpu'
          in proc.stderr)


@pytest.mark.parametrize('accelerator, extra, platform', [
    ('cuda', 'cuda', 'cuda'), ('cuda12', 'cuda', 'cuda'),
    ('cuda13', 'cuda13', 'cuda'), ('tpu', 'tpu', 'tpu'), ('cpu', '', 'cpu')])
def test_run_sh_exports_the_accelerator_and_jax_platforms(
    fake, accelerator, extra, platform):
  """What the program checks against what JAX sees (no CPU fallback)."""
  venv = fake.tmp / 'venv'
  env = dict(DD_VENV=venv, DD_ACCELERATOR=accelerator,
             DD_PYTHON=fake.bin / 'fake-python3')
  proc = _run(RUN_SH, fake, '--config=configs/digits.py', **env)
  assert proc.returncode == 0, proc.stderr
  install = fake.calls()[2]
  assert install[-1] == (f'{REPO}[{extra}]' if extra else str(REPO))
  # The stand-in venv python is the recorder: print its environment instead.
  probe = venv / 'bin' / 'python'
  probe.write_text('#!/bin/sh\necho "$DD_ACCELERATOR $JAX_PLATFORMS"\n')
  proc = _run(RUN_SH, fake, '--config=configs/digits.py', **env)
  assert proc.stdout.strip() == f'{accelerator} {platform}'
  proc = _run(RUN_SH, fake, '--config=configs/digits.py',
              **dict(env, JAX_PLATFORMS='cpu'))
  assert proc.stdout.strip() == f'{accelerator} cpu'  # a user's choice stays


SLURM_SH = REPO / 'launch' / 'slurm.sh'


def test_slurm_sh_submits_itself_then_starts_one_task_per_gpu(fake):
  for name in ('sbatch', 'srun'):
    _write_exe(fake.bin / name, fake.recorder)
  args = ['--config=configs/cifar10_distill.py', '--workdir=/shared/w x']
  proc = _run(SLURM_SH, fake, *args, NODES='4', GPUS_PER_NODE='8',
              TIME='2:00:00', DD_SBATCH_ARGS='--partition=gpu --account=a')
  assert proc.returncode == 0, proc.stderr
  assert fake.calls() == [[
      'sbatch', '--job-name=diffusion_distillation', '--nodes=4',
      '--ntasks-per-node=8', '--gpus-per-node=8', '--time=2:00:00',
      '--partition=gpu', '--account=a', str(SLURM_SH), *args]]
  fake.log.unlink()
  proc = _run(SLURM_SH, fake, *args, SLURM_JOB_ID='7')  # inside the job
  assert proc.returncode == 0, proc.stderr
  assert fake.calls() == [['srun', '--kill-on-bad-exit=1', 'bash',
                           str(RUN_SH), *args]]


def test_run_sh_stamp_skips_install(fake):
  venv = fake.tmp / 'venv'
  (venv / 'bin').mkdir(parents=True)
  _write_exe(venv / 'bin' / 'python', fake.recorder)
  (venv / 'bin' / 'pip').touch()
  env = dict(DD_DRY_RUN='1', DD_VENV=venv, DD_ACCELERATOR='cuda')

  proc = _run(RUN_SH, fake, **env)
  commands = _dry_commands(proc.stdout)
  assert 'venv' not in commands[0]  # exists: not created again
  (write,) = [c for c in commands if c[0] == 'write']
  assert not (venv / '.dd_install_stamp').exists()  # dry run writes nothing
  (venv / '.dd_install_stamp').write_text(write[2] + '\n')

  proc = _run(RUN_SH, fake, '--x=1', **env)
  assert proc.returncode == 0, proc.stderr
  assert _dry_commands(proc.stdout) == [
      [str(venv / 'bin' / 'python'), '-m', 'diffusion_distillation.main',
       '--x=1']]
  assert 'install: up to date (cuda)' in proc.stderr

  # Another accelerator needs another install.
  proc = _run(RUN_SH, fake, **dict(env, DD_ACCELERATOR='tpu'))
  assert _dry_commands(proc.stdout)[1][-1] == f'{REPO}[tpu]'


def test_run_sh_real_run_with_stand_in_pythons(fake):
  """Not a dry run: venv creation, pip and main all hit stand-ins."""
  venv = fake.tmp / 'venv'
  args = ['--config=configs/cifar10_distill.py', 'a b', '', '$HOME']
  env = dict(DD_VENV=venv, DD_ACCELERATOR='cpu',
             DD_PYTHON=fake.bin / 'fake-python3')
  proc = _run(RUN_SH, fake, *args, **env)
  assert proc.returncode == 0, proc.stderr
  py = str(venv / 'bin' / 'python')
  assert fake.calls() == [
      ['fake-python3', '-m', 'venv', str(venv)],
      ['python', '-m', 'pip', 'install', '--quiet',
       '--disable-pip-version-check', '--upgrade', 'pip'],
      ['python', '-m', 'pip', 'install', '--quiet',
       '--disable-pip-version-check', '-e', f'{REPO}[tfds]'],
      ['python', '-m', 'diffusion_distillation.main', *args]]
  assert (venv / '.dd_install_stamp').read_text().strip()
  assert Path(py).exists()

  # Second launch: nothing is created or installed again.
  fake.log.unlink()
  proc = _run(RUN_SH, fake, args[0], '--x=2', **env)
  assert proc.returncode == 0, proc.stderr
  assert fake.calls() == [['python', '-m', 'diffusion_distillation.main',
                           args[0], '--x=2']]
