"""Multi-process runs on one machine: 2 processes x 2 host CPU devices.

The tiny digits pipeline (teacher, then distillation 4 -> 2 -> 1 sampler
steps) runs as two processes joined through `jax.distributed` (first as two
SLURM tasks that know only the variables `srun` sets, then through the CLI's
--coordinator_address / --num_processes / --process_id flags; gloo
collectives on CPU), each with 2 host-simulated devices, and is compared with
one process with 4 devices and the same global batch:

* both processes exit 0, and each read its own half of every global batch;
* the workdir holds one coherent tree: one config.json, one TensorBoard stream
  per stage, one grid per stage, orbax checkpoints finalized once per step;
* a rerun resumes: the first 2-process run stops after distill_2 (a shorter
  distillation schedule); the second skips base and distill_2 (their final
  checkpoints exist) and trains distill_1 from distill_2's final checkpoint;
* the final parameters of every stage equal the single-process run's up to
  float rounding.

Each process group runs under a deadline; if any process fails, the others
(which would wait in a collective) are killed at once.

Timing (2 shared CPU cores): XLA:CPU's persistent compilation cache key differs
between processes in JAX 0.10, so process 1 recompiles every program on every
run even with a warm cache; the pipeline test takes several minutes.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import free_port
from helpers import ProcessGroup
from helpers import PYTHON
from helpers import REPO

pytestmark = [pytest.mark.slow, pytest.mark.processes]

WORKER = os.path.join(REPO, 'tests', 'multihost_worker.py')
GLOBAL_BATCH = 8

# The brief's tiny pipeline: base (4 updates), distill_2 and distill_1 (2 each).
FLAGS = {
    'model.args.ch': 32,
    'model.args.emb_ch': 32,
    'model.args.ch_mult': '(1,)',
    'model.args.num_res_blocks': 1,
    'model.args.attn_resolutions': '()',
    'model.eval_sampling_num_steps': 8,  # the teacher's sample grid
    'train.num_train_steps': 4,
    'train.batch_size': GLOBAL_BATCH,
    'train.checkpoint_every_steps': 2,
    'train.log_loss_every_steps': 2,
    'distillation.start_num_steps': 4,
    'distillation.steps_per_iter': 2,
    'eval.run_after_training': False,
    'eval.grid_samples': 8,
    'eval.batch_size': 8,
}
STAGES = {'base': 4, 'distill_2': 2, 'distill_1': 2}  # name -> final step


def _env(num_devices, shard_log=None):
  env = dict(os.environ)
  env.update(
      XLA_FLAGS=f'--xla_force_host_platform_device_count={num_devices}',
      JAX_PLATFORMS='cpu',
      PYTHONUNBUFFERED='1')
  if shard_log:
    env['DD_SHARD_LOG'] = str(shard_log)
  return env


def _command(workdir, overrides=None):
  flags = dict(FLAGS, **(overrides or {}))
  return [PYTHON, WORKER, f'--config={REPO}/configs/digits.py',
          f'--workdir={workdir}'] + [f'--config.{k}={v}'
                                     for k, v in flags.items()]


def _wait(groups, deadline):
  """Waits for all processes; on a failure or past `deadline`, kills all."""
  procs = [p for g in groups for p in g.procs]
  try:
    while any(p.poll() is None for p in procs):
      failed = [p for p in procs if p.poll() not in (None, 0)]
      if failed or time.time() > deadline:
        for g in groups:
          g.kill()
        reason = 'a process failed' if failed else 'timed out'
        raise AssertionError(f'{reason}:\n' +
                             '\n'.join(g.tails() for g in groups))
      time.sleep(0.2)
  finally:
    for g in groups:
      g.kill()  # no-op for exited processes; closes the logs
  for g in groups:
    for p in g.procs:
      assert p.returncode == 0, g.tails()


def _start_multiprocess(group, workdir, shard_log, overrides=None, n=2):
  """n processes joined by the --coordinator_address flags."""
  address = f'127.0.0.1:{free_port()}'
  for i in range(n):
    group.start(_command(workdir, overrides) +
                [f'--coordinator_address={address}', f'--num_processes={n}',
                 f'--process_id={i}'], _env(2, shard_log))


def slurm_job_id() -> int:
  """A job id whose coordinator port (JAX: 61440 + id % 4096) is free."""
  for job_id in range(1000, 4096):
    try:
      with socket.socket() as s:
        s.bind(('127.0.0.1', 61440 + job_id))
      return job_id
    except OSError:
      continue
  raise AssertionError('no free port in 61440-65535')


def slurm_env(job_id: int, task: int, n: int) -> dict:
  """The variables `srun` sets for task `task` of `n` on this one node."""
  return dict(SLURM_JOB_ID=str(job_id), SLURM_STEP_NODELIST='localhost',
              SLURM_NTASKS=str(n), SLURM_PROCID=str(task),
              SLURM_LOCALID=str(task), SLURM_STEP_NUM_NODES='1')


def _start_slurm_tasks(group, workdir, shard_log, overrides=None, n=2):
  """n processes that know only SLURM's variables (no flags)."""
  job_id = slurm_job_id()
  for i in range(n):
    group.start(_command(workdir, overrides),
                dict(_env(2, shard_log), **slurm_env(job_id, i, n)))


def _read_shard_log(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _check_shards(multi_records, single_records):
  """Each process asked for its own share, and got its half of the batch."""
  from diffusion_distillation import data as data_lib  # pylint: disable=g-import-not-at-top
  reference = {(r['seed'], r['start_step']): r for r in single_records}
  assert all(r['process_count'] == 1 for r in single_records)
  by_call = {}
  for r in multi_records:
    assert r['process_count'] == 2 and r['global_batch_size'] == GLOBAL_BATCH
    by_call.setdefault((r['seed'], r['start_step']), {})[r['process_index']] = r
  assert set(by_call) == set(reference), (sorted(by_call), sorted(reference))
  digits = data_lib.get_dataset('digits', randflip=False)
  for key, shares in by_call.items():
    assert sorted(shares) == [0, 1], f'{key}: process indices {sorted(shares)}'
    assert shares[0]['pid'] != shares[1]['pid']
    whole = np.asarray(reference[key]['first_images'])
    halves = [np.asarray(shares[p]['first_images']) for p in (0, 1)]
    half = GLOBAL_BATCH // 2
    np.testing.assert_array_equal(halves[0], whole[:half])
    np.testing.assert_array_equal(halves[1], whole[half:])
    # The same as the datasets API gives (what the pipeline asked for).
    for p in (0, 1):
      expected = next(digits.train_batches(
          global_batch_size=GLOBAL_BATCH, seed=key[0], start_step=key[1],
          process_index=p, process_count=2))
      np.testing.assert_array_equal(halves[p], expected['image'])


def _check_tree(workdir, shard_log):
  """One config, event files of process 0 only, one grid per stage, finalized
  steps."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  files = sorted(str(p.relative_to(workdir)) for p in workdir.rglob('*')
                 if p.is_file())
  assert [f for f in files if 'orbax-checkpoint-tmp' in f] == []
  assert files.count('config.json') == 1
  assert sorted(f for f in files if f.startswith('samples/')) == [
      'samples/base_8steps.png', 'samples/distill_1_1steps.png',
      'samples/distill_2_2steps.png']
  for stage, final in STAGES.items():
    events = [f for f in files if f.startswith(f'tensorboard/{stage}/')]
    # Named by the writer's pid: process 0's (one per run of the command).
    writers = {str(r['pid']) for r in _read_shard_log(shard_log)
               if r['process_index'] == 0}
    assert events and {f.rsplit('.', 2)[1] for f in events} <= writers, (
        events, writers)
    directory = workdir / 'checkpoints' / stage
    steps = sorted(ocp.utils.checkpoint_steps(directory))
    assert steps == list(range(2, final + 1, 2)), (stage, steps)
    for step in steps:
      step_dir = directory / str(step)
      for name in ('_CHECKPOINT_METADATA', 'state/_METADATA',
                   'state/manifest.ocdbt', 'meta/metadata'):
        assert (step_dir / name).exists(), f'{step_dir}/{name} missing'
      meta = json.loads((step_dir / 'meta' / 'metadata').read_text())
      assert meta['stage'] == stage, meta
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == sorted(
      STAGES)


def _final_params(workdir):
  """Every stage's final EMA parameters, loaded as a user would."""
  import jax  # pylint: disable=g-import-not-at-top

  from diffusion_distillation.pipeline import workdirs  # pylint: disable=g-import-not-at-top
  loaded = workdirs.open_workdir(str(workdir))
  assert [s.name for s in loaded.stages] == list(STAGES)
  params = {'base': loaded.teacher_params(),
            'distill_2': loaded.student_params(2),
            'distill_1': loaded.student_params(1)}
  return {stage: jax.tree_util.tree_flatten_with_path(jax.device_get(p))[0]
          for stage, p in params.items()}


def _step_dirs(workdir):
  return sorted(str(p.relative_to(workdir))
                for p in (workdir / 'checkpoints').glob('*/*') if p.is_dir())


def test_two_processes_match_one(tmp_path):
  multi, single = tmp_path / 'multi', tmp_path / 'single'
  multi_log, single_log = tmp_path / 'multi.jsonl', tmp_path / 'single.jsonl'
  start = time.time()

  # 2 processes x 2 devices, stopping after distill_2; meanwhile the
  # reference: 1 process x 4 devices, the whole pipeline in one go.
  first, ref = ProcessGroup('first', tmp_path), ProcessGroup('single', tmp_path)
  _start_slurm_tasks(first, multi, multi_log,
                     overrides={'distillation.end_num_steps': 2})
  ref.start(_command(single), _env(4, single_log))
  _wait([first, ref], deadline=time.time() + 480)
  assert _step_dirs(multi) == ['checkpoints/base/2', 'checkpoints/base/4',
                               'checkpoints/distill_2/2']
  for i, log in enumerate(first.logs()):
    assert f'process {i} of 2, 2 local / 4 global devices' in log
    assert '[Gloo]' not in log
  assert ('cpu backend: 2 processes, 2 local / 4 global devices (cpu); '
          'cluster: slurm') in first.logs()[0]

  # Rerun with the whole schedule: base and distill_2 are finished and
  # skipped, distill_1 starts from distill_2's final checkpoint.
  second = ProcessGroup('second', tmp_path)
  _start_multiprocess(second, multi, multi_log)
  _wait([second], deadline=time.time() + 300)
  for log in second.logs():
    assert 'base: 4 updates' not in log and 'resuming' not in log
    assert 'distill_2: 2 updates' not in log
    assert 'distill_1: 2 updates' in log
    summary = log.split('Finished. Workdir:')[-1]
    assert all(stage in summary for stage in STAGES), summary

  _check_shards(_read_shard_log(multi_log), _read_shard_log(single_log))
  _check_tree(multi, multi_log)
  _check_tree(single, single_log)

  got, want = _final_params(multi), _final_params(single)
  for stage in STAGES:
    assert [k for k, _ in got[stage]] == [k for k, _ in want[stage]]
    for (path, a), (_, b) in zip(got[stage], want[stage]):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5,
                                 err_msg=f'{stage} {path}')
  print(f'multihost test: {time.time() - start:.0f}s', file=sys.stderr)


# One process arrives 35 s late at the first data-parallel step: more than the
# 30 s within which XLA:CPU's gloo must connect a device group on its first
# collective. `distributed.initialize` connects them up front, so it works.
_SKEW_SCRIPT = r'''
import sys, time
import numpy as np
from diffusion_distillation.parallel import distributed, sharding
pid, address, delay = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
distributed.initialize(address, 2, pid)
import jax
mesh = sharding.make_mesh()
if pid == 1:
  time.sleep(delay)
x = sharding.global_batch(np.full([jax.local_device_count()], pid + 1.,
                                  np.float32), mesh)
total = jax.jit(lambda v: v.sum(),
                out_shardings=sharding.replicated(mesh))(x)
distributed.barrier('after the step')  # orbax's barrier kind
print('RESULT', float(sharding.to_host(total)), distributed.agree(pid == 0),
      flush=True)
'''


def test_processes_out_of_step_by_more_than_gloo_timeout(tmp_path):
  group = ProcessGroup('skew', tmp_path)
  address = f'127.0.0.1:{free_port()}'
  for i in range(2):
    group.start([PYTHON, '-c', _SKEW_SCRIPT, str(i), address, '35'],
                _env(2))
  _wait([group], deadline=time.time() + 240)
  for log in group.logs():
    # Process 0 sums 1 + 1, process 1 2 + 2; process 0's `agree` wins.
    assert 'RESULT 6.0 True' in log, log[-2000:]


def test_single_process_helpers():
  from diffusion_distillation.parallel import distributed  # pylint: disable=g-import-not-at-top
  assert distributed.initialize() is None  # nothing to join
  assert distributed.is_primary()
  distributed.barrier('alone')
  assert distributed.agree(True) is True
  assert distributed.agree(0) is False


def test_a_new_run_ends_the_service_an_earlier_one_left_lingering():
  """A killed process 0 leaves its coordination service up for
  --process_timeout + 15 s (the others' watchdogs need it to say so); a new
  run on the same port ends it instead of refusing the port."""
  from diffusion_distillation.parallel import distributed  # pylint: disable=g-import-not-at-top
  port = free_port()
  spec = json.dumps({'address': f'[::]:{port}', 'grace': 300,
                     'service_args': {'num_nodes': 2}})
  service = subprocess.Popen(
      [PYTHON, '-m', 'diffusion_distillation.parallel.coordinator', spec],
      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert service.stdout.readline().strip() == 'ready'
    service.stdin.close()  # its process 0 ended without a word
    time.sleep(1)
    assert service.poll() is None  # lingering, holding the port
    distributed._check_port_free(port)  # pylint: disable=protected-access
    assert service.wait(timeout=10) == -signal.SIGKILL
  finally:
    service.kill()
