"""Faults a long training run meets, on tiny runs.

Damaged checkpoints, divergence, a full disk and a rerun with a changed
config: each ends in one line or is repaired, and no damaged or non-finite
state becomes a teacher.
"""

import functools
import json
import os
import shutil
import subprocess

import jax
import numpy as np
import pytest

from diffusion_distillation import objectives
from diffusion_distillation.config import ConfigError
from diffusion_distillation.pipeline import checkpoints
from diffusion_distillation.pipeline import loop
from diffusion_distillation.pipeline import optimization
from diffusion_distillation.pipeline import stages
from diffusion_distillation.pipeline import train_state
from diffusion_distillation.pipeline import update
from diffusion_distillation.pipeline import workdirs

from helpers import damage_arrays
from helpers import override_flags
from helpers import PYTHON
from helpers import REPO
from helpers import subprocess_env
from helpers import tiny_config


def copy_of(workdir, tmp_path):
  target = tmp_path / 'workdir'
  shutil.copytree(workdir, target)
  return target


def student_params(workdir, steps):
  loaded = workdirs.open_workdir(str(workdir))
  return jax.device_get(loaded.student_params(steps))


def assert_same(tree_a, tree_b):
  for a, b in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def main_cmd(workdir, *extra):
  return [PYTHON, '-m', 'diffusion_distillation.main',
          f'--config={os.path.join(REPO, "configs", "digits.py")}',
          f'--workdir={workdir}', *override_flags(), *extra]


def run(cmd, env=None):
  return subprocess.run(cmd, env=env or subprocess_env(), capture_output=True,
                        text=True, timeout=600, check=False)


def last_line(stderr: str) -> str:
  return stderr.strip().splitlines()[-1]


def test_damaged_final_checkpoints_are_set_aside_and_their_stages_redone(
    finished_workdir, tmp_path):
  reference, _ = finished_workdir
  workdir = copy_of(reference, tmp_path)
  damage_arrays(workdir / 'checkpoints' / 'distill_4' / '4')
  (workdir / 'checkpoints' / 'distill_2' / '4' / 'state' /
   'manifest.ocdbt').unlink()  # tensorstore: NOT_FOUND ... .zarray

  with pytest.raises(checkpoints.CheckpointError, match='distill_4/4'):
    student_params(workdir, 4)  # sampling reports it and changes nothing
  loop.run(tiny_config(), str(workdir))

  damaged = workdir / 'checkpoints' / 'damaged'
  assert sorted(os.listdir(damaged)) == ['distill_2', 'distill_4']
  for steps in (4, 2, 1):  # redone from step 2: exactly the same students
    assert_same(student_params(workdir, steps),
                student_params(reference, steps))


def test_a_full_disk_ends_in_one_line_and_a_rerun_resumes(
    finished_workdir, tmp_path):
  reference, _ = finished_workdir
  workdir = tmp_path / 'full'
  cmd = main_cmd(workdir, '--config.distillation.end_num_steps=4')
  env = dict(subprocess_env(), DD_SAVES_BEFORE_FULL='1')
  full = run([PYTHON, os.path.join(REPO, 'tests', 'disk_full_worker.py'),
              *cmd[3:]], env)
  assert full.returncode == 2, full.stderr[-3000:]
  assert 'Traceback' not in full.stderr
  assert last_line(full.stderr) == (
      f'error: saving checkpoint {workdir}/checkpoints/base/4 failed: [Errno '
      '28] No space left on device; the previous checkpoint is intact, rerun '
      'to resume from it')

  resumed = run(cmd)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'base: resuming from step 2' in resumed.stderr
  assert_same(student_params(workdir, 4), student_params(reference, 4))


def finite_checkpoints(workdir) -> bool:
  ok = True
  for stage_dir in (workdir / 'checkpoints').iterdir():
    manager = checkpoints.StageCheckpoints(stage_dir, read_only=True)
    if manager.latest_step() is None:  # diverged before its first save
      continue
    state, _ = manager.restore_as_saved()
    ok &= all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state)
              if np.issubdtype(np.asarray(x).dtype, np.floating))
    manager.close()
  return ok


def test_divergence_stops_with_one_line_and_saves_nothing_non_finite(
    tmp_path):
  workdir = tmp_path / 'diverged'
  result = run(main_cmd(workdir, '--config.train.num_train_steps=20',
                        '--config.train.learning_rate=1e4',
                        '--config.train.learning_rate_warmup_steps=0'))
  assert result.returncode == 2, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
  line = last_line(result.stderr)
  assert line.startswith('error: ') and ' diverged at step ' in line
  assert 'nothing non-finite was saved' in line
  assert 'learning_rate (now ' in line and 'enable_update_skip' in line
  assert finite_checkpoints(workdir)


def test_update_skip_drops_a_non_finite_update_and_counts_it(
    finished_workdir):
  workdir, _ = finished_workdir
  config = tiny_config(train__enable_update_skip=True)
  ctx = loop.make_context(config, workdir)
  stage = stages.plan_stages(config)[0]
  opt = optimization.optimization_for(config, stage)
  steps = functools.partial(jax.jit(update.make_train_steps(
      objectives.make('teacher', optimization.stage_model(ctx, opt)), opt)),
      key=jax.random.PRNGKey(0))
  state = train_state.create(ctx.base_model.init_params(
      jax.random.PRNGKey(0)), opt.tx, 0)
  batch = next(ctx.dataset.train_batches(
      global_batch_size=8, seed=0, start_step=0, process_index=0,
      process_count=1))
  good = update.stack_batches([batch, batch])
  bad = update.stack_batches([dict(batch, image=batch['image'] * np.nan)])

  after_good, metrics = steps(state, good, None)
  assert [float(x) for x in metrics['skipped']] == [0., 0.]
  after_bad, metrics = steps(after_good, bad, None)
  assert [float(x) for x in metrics['skipped']] == [1.]
  assert int(after_bad.step) == 3  # the step still advances
  assert_same((after_bad.params, after_bad.ema_params, after_bad.opt_state),
              (after_good.params, after_good.ema_params,
               after_good.opt_state))


def test_rerun_with_a_training_setting_changed_is_accepted(
    finished_workdir, tmp_path):
  reference, _ = finished_workdir
  workdir = copy_of(reference, tmp_path)
  # Changes the optimizer update (official update skip), not its state.
  loop.run(tiny_config(train__enable_update_skip=True), str(workdir))
  saved = json.loads((workdir / 'config.json').read_text())
  assert saved['train']['enable_update_skip'] is True
  assert_same(student_params(workdir, 1), student_params(reference, 1))


def test_more_base_updates_train_the_teacher_on_and_redo_the_students(
    finished_workdir, tmp_path):
  reference, _ = finished_workdir
  workdir = copy_of(reference, tmp_path)
  summary = loop.run(tiny_config(train__num_train_steps=6), str(workdir))
  assert summary[0]['stage'] == 'base' and summary[0]['num_updates'] == 6
  stale = workdir / 'checkpoints' / 'stale'
  assert sorted(os.listdir(stale)) == ['distill_1', 'distill_2', 'distill_4']
  new = student_params(workdir, 1)
  old = student_params(reference, 1)
  assert any(not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(new), jax.tree.leaves(old)))


def test_rerun_that_changes_finished_work_is_refused_before_writing(
    finished_workdir, tmp_path):
  reference, _ = finished_workdir
  workdir = copy_of(reference, tmp_path)
  before = (workdir / 'config.json').read_bytes()
  result = run(main_cmd(
      workdir, '--config.model.eval_logsnr_schedule.logsnr_min=-5'))
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  assert last_line(result.stderr) == (
      'error: config.model.eval_logsnr_schedule.logsnr_min is -5.0 but the '
      'workdir was created with -20.0; a rerun cannot change it (use a new '
      '--workdir)')
  assert (workdir / 'config.json').read_bytes() == before
  with pytest.raises(ConfigError, match='train.num_train_steps'):
    loop.run(tiny_config(train__num_train_steps=2), str(workdir))
