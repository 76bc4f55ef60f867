"""The whole pipeline on a tiny config: stages, resume, devices, sampling."""

import functools
import os
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from diffusion_distillation import objectives
from diffusion_distillation.cli import sample as sample_cli
from diffusion_distillation.models import generation
from diffusion_distillation.pipeline import checkpoints
from diffusion_distillation.pipeline import finished_stages
from diffusion_distillation.pipeline import loop
from diffusion_distillation.pipeline import optimization
from diffusion_distillation.pipeline import stages
from diffusion_distillation.pipeline import train_state
from diffusion_distillation.pipeline import update
from diffusion_distillation.pipeline import workdirs

from helpers import override_flags
from helpers import PYTHON
from helpers import REPO
from helpers import run_module
from helpers import subprocess_env
from helpers import tiny_config

pytestmark = pytest.mark.heavy  # processes, training: not the fast tier


def _main_cmd(workdir, extra=()):
  return [PYTHON, '-m', 'diffusion_distillation.main',
          f'--config={os.path.join(REPO, "configs", "digits.py")}',
          f'--workdir={workdir}', *override_flags(), *extra]


def _final_params(workdir, steps=None):
  """The finished students' parameters (those for `steps`, default all)."""
  loaded = workdirs.open_workdir(str(workdir))
  return {n: loaded.student_params(n) for n in steps or loaded.student_steps()}


def _assert_same_params(a, b, **tol):
  assert sorted(a) == sorted(b)
  for n in a:
    for x, y in zip(jax.tree.leaves(a[n]), jax.tree.leaves(b[n])):
      if tol:
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)
      else:
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_plan_halves_from_start_to_end():
  planned = stages.plan_stages(tiny_config())
  assert [s.name for s in planned] == ['base', 'distill_4', 'distill_2',
                                       'distill_1']
  assert [s.num_sample_steps for s in planned[1:]] == [4, 2, 1]
  assert all(s.num_updates == 4 for s in planned)
  with_teacher = tiny_config(distillation__teacher_checkpoint_path='/x')
  assert [s.name for s in stages.plan_stages(with_teacher)][0] == 'distill_4'


def test_pipeline_trains_teacher_and_three_stages(finished_workdir):
  workdir, summary = finished_workdir
  assert [m['stage'] for m in summary] == ['base', 'distill_4', 'distill_2',
                                           'distill_1']
  for meta in summary:
    assert np.isfinite(meta['loss'])
    assert os.path.exists(meta['grid'])
    assert finished_stages.stage_is_complete(workdir, meta['stage'], 4)
    # clu's parameter table, per module, beside the stage's checkpoints.
    table = (checkpoints.stage_dir(workdir, meta['stage']) /
             checkpoints.PARAMETERS_FILE).read_text()
    assert '| conv_in/kernel' in table and 'Total: ' in table
  assert (workdir / 'config.json').exists()
  assert list((workdir / 'tensorboard' / 'distill_1').iterdir())
  text = loop.format_summary(summary, workdir)
  assert 'distill_1' in text and 'final loss' in text


def test_students_start_from_teacher_and_then_move(finished_workdir):
  workdir, _ = finished_workdir
  loaded = workdirs.open_workdir(str(workdir))
  teacher = jax.tree.leaves(loaded.teacher_params())
  student = jax.tree.leaves(loaded.student_params(4))
  assert any(not np.array_equal(t, s) for t, s in zip(teacher, student))


def test_rerun_of_finished_workdir_changes_nothing(finished_workdir):
  workdir, _ = finished_workdir
  before = _final_params(workdir)
  summary = loop.run(tiny_config(), str(workdir))
  assert [m['stage'] for m in summary][-1] == 'distill_1'
  _assert_same_params(before, _final_params(workdir))


@pytest.mark.slow
def test_resume_after_sigkill_and_sigterm_is_exact(finished_workdir, tmp_path):
  """Killed twice (SIGKILL mid-stage, then SIGTERM), the run still ends with
  exactly the parameters of the uninterrupted run."""
  reference, _ = finished_workdir
  workdir = tmp_path / 'killed'
  env = subprocess_env()

  def run_until(marker, sig):
    proc = subprocess.Popen(cmd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 480
    while not marker.exists():
      assert proc.poll() is None, proc.stderr.read()[-3000:]
      assert time.time() < deadline, 'marker never appeared'
      time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err

  # Two stages are enough; they equal the first two of the reference run.
  cmd = _main_cmd(workdir, ['--config.distillation.end_num_steps=2'])
  code, _ = run_until(workdir / 'checkpoints' / 'distill_4' / '2',
                      signal.SIGKILL)
  assert code == -signal.SIGKILL
  # At the end of distill_4 the signal always lands before distill_2 ends:
  # distill_2 saves after its first update and stops.
  code, err = run_until(workdir / 'checkpoints' / 'distill_4' / '4',
                        signal.SIGTERM)
  assert code != 0 and 'rerun the same command to resume' in err, err[-3000:]
  assert 'Traceback' not in err
  done = subprocess.run(cmd, env=env, capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'distill_2' in done.stdout
  _assert_same_params(_final_params(reference, [4, 2]), _final_params(workdir))


@pytest.mark.slow
def test_four_devices_match_one_device_compiling_two_updates(
    finished_workdir, tmp_path):
  """Data parallelism: 4 devices, same global batch, same updates. The run
  (base + 3 distillation stages) compiles one update per stage kind, and
  `--profile_steps` traces updates for TensorBoard."""
  reference, _ = finished_workdir
  workdir = tmp_path / 'four'
  env = dict(subprocess_env(4), JAX_LOG_COMPILES='1')
  done = subprocess.run(_main_cmd(workdir, ['--profile_steps=2']), env=env,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  # Later stages learn from teachers that differ by float rounding already.
  _assert_same_params(_final_params(reference, [4]),
                      _final_params(workdir, [4]), rtol=2e-3, atol=2e-5)
  assert done.stderr.count('Compiling jit(train_steps)') == 2
  assert list((workdir / 'profile').rglob('*.xplane.pb'))


def test_sample_writes_npz_and_grid(finished_workdir, tmp_path):
  workdir, _ = finished_workdir
  out = tmp_path / 'samples.npz'
  npz, grid = sample_cli.sample_workdir(str(workdir), num_steps=2,
                                        num_samples=5, seed=3, output=str(out))
  with np.load(npz) as f:
    images = f['images']
    assert 'labels' not in f  # unconditional
  assert images.shape == (5, 8, 8, 1) and images.dtype == np.uint8
  assert os.path.exists(grid)
  loaded = workdirs.open_workdir(str(workdir))
  again, _ = generation.generate(loaded.model, loaded.student_params(2),
                                 mesh=loaded.mesh, num_samples=5, num_steps=2,
                                 seed=3)
  np.testing.assert_array_equal(images, again)  # seeded


def test_teacher_samples_with_any_step_count(finished_workdir, tmp_path):
  workdir, _ = finished_workdir
  npz, _ = sample_cli.sample_workdir(
      str(workdir), num_steps=3, num_samples=4, seed=0,
      output=str(tmp_path / 't.npz'), model='teacher', sampler='ancestral')
  with np.load(npz) as f:
    assert f['images'].shape == (4, 8, 8, 1)


def test_sample_cli_defaults_as_the_api(finished_workdir, tmp_path):
  """--model=teacher without --num_steps: the teacher's eval step count, as
  dd.load; a student without it: which one, and the step counts there are."""
  workdir, _ = finished_workdir
  out = tmp_path / 'teacher.npz'
  teacher = run_module('sample', f'--workdir={workdir}', '--model=teacher',
                       '--num_samples=3', f'--output={out}')
  assert teacher.returncode == 0, teacher.stderr[-2000:]
  with np.load(out) as f:
    assert f['images'].shape == (3, 8, 8, 1)
  student = run_module('sample', f'--workdir={workdir}', '--num_samples=3',
                       f'--output={tmp_path / "student.npz"}')
  assert student.returncode == 2
  assert student.stderr.strip().splitlines()[-1] == (
      f'error: which distilled student of {workdir}? pass --num_steps; '
      'available step counts: 1, 2, 4')


def test_missing_student_lists_available_steps(finished_workdir, tmp_path):
  workdir, _ = finished_workdir
  with pytest.raises(workdirs.WorkdirError, match='1, 2, 4'):
    sample_cli.sample_workdir(str(workdir), num_steps=3, num_samples=4, seed=0,
                              output=str(tmp_path / 'x.npz'))


@pytest.mark.slow
def test_substeps_in_one_call_equal_single_steps(finished_workdir):
  """`train.substeps` updates per compiled call (lax.scan) are the same
  updates as one call per step."""
  workdir, _ = finished_workdir
  config = tiny_config()
  ctx = loop.make_context(config, workdir)
  stage = stages.plan_stages(config)[1]
  opt = optimization.optimization_for(config, stage)
  teacher = workdirs.open_workdir(str(workdir)).teacher_params()
  steps = functools.partial(
      update.make_train_steps(objectives.make(
          stage.objective, optimization.stage_model(ctx, opt)), opt),
      key=jax.random.PRNGKey(0))
  state = train_state.create(teacher, opt.tx, stage.num_sample_steps)
  data = ctx.dataset.train_batches(global_batch_size=8, seed=0)
  batches = update.stack_batches([next(data), next(data)])
  together, metrics = jax.jit(steps)(state, batches, teacher)
  one = state
  for k in range(2):
    one, _ = jax.jit(steps)(one, jax.tree.map(lambda b: b[k:k + 1], batches),
                            teacher)
  assert metrics['loss'].shape == (2,)
  for a, b in zip(jax.tree.leaves(together), jax.tree.leaves(one)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _has_ema(workdir, stage_name, step=None):
  manager = checkpoints.StageCheckpoints(
      checkpoints.stage_dir(workdir, stage_name), read_only=True)
  state, _ = manager.restore_as_saved(step)
  manager.close()
  return state['ema_params'] is not None


def _save_with_ema(ctx, stage, step):
  """Rewrites a student's checkpoint as the code before EMA-less students
  wrote it: with an EMA equal to the parameters."""
  directory = checkpoints.stage_dir(ctx.workdir, stage.name)
  manager = checkpoints.StageCheckpoints(directory, read_only=True)
  state, meta = manager.restore(finished_stages.abstract_state(ctx, stage), step)
  manager.close()
  shutil.rmtree(directory / str(step))
  manager = checkpoints.StageCheckpoints(directory, keep=10)
  manager.save(train_state.with_average(state, True), meta)
  manager.close()


@pytest.mark.slow
def test_students_keep_no_ema_and_resume_from_checkpoints_that_have_one(
    finished_workdir, tmp_path):
  """A distillation stage's EMA decay is 0: no EMA copy is stored. A workdir
  from before (students saved with one) loads and resumes exactly."""
  reference, _ = finished_workdir
  assert _has_ema(reference, 'base') and not _has_ema(reference, 'distill_2')
  workdir = tmp_path / 'old'
  shutil.copytree(reference, workdir)
  ctx = loop.make_context(tiny_config(), workdir)
  planned = {s.name: s for s in stages.plan_stages(tiny_config())}
  _save_with_ema(ctx, planned['distill_2'], 4)
  _save_with_ema(ctx, planned['distill_1'], 2)
  shutil.rmtree(checkpoints.stage_dir(workdir, 'distill_1') / '4')
  assert _has_ema(workdir, 'distill_2') and _has_ema(workdir, 'distill_1', 2)

  loop.run(tiny_config(), str(workdir))  # resumes distill_1 at step 2
  assert not (workdir / 'checkpoints' / 'damaged').exists()
  _assert_same_params(_final_params(reference), _final_params(workdir))
  assert not _has_ema(workdir, 'distill_1')
