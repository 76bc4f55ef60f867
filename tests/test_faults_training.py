"""Faults a long training run meets, on tiny runs.

Damaged checkpoints, divergence, a full disk and a rerun with a changed
config: each ends in one line or is repaired, and no damaged or non-finite
state becomes a teacher.
"""

import functools
import json
import os
import shutil
import signal
import subprocess

import jax
import numpy as np
import pytest

from diffusion_distillation import objectives
from diffusion_distillation.config import ConfigError
from diffusion_distillation.parallel import preemption
from diffusion_distillation.pipeline import checkpoints
from diffusion_distillation.pipeline import divergence
from diffusion_distillation.pipeline import finished_stages
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

pytestmark = pytest.mark.slow  # end-to-end runs


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
  (workdir / 'checkpoints' / 'distill_1' / '4' / 'state' /
   '_METADATA').unlink()  # orbax: no metadata at all

  with pytest.raises(checkpoints.CheckpointError, match='distill_4/4'):
    student_params(workdir, 4)  # sampling reports it and changes nothing
  with pytest.raises(checkpoints.CheckpointError,
                     match='distill_1/4 failed: its state/_METADATA file is '
                     'missing'):
    student_params(workdir, 1)
  loop.run(tiny_config(), str(workdir))

  damaged = workdir / 'checkpoints' / 'damaged'
  assert sorted(os.listdir(damaged)) == ['distill_1', 'distill_2',
                                         'distill_4']
  for steps in (4, 2, 1):  # redone from step 2: exactly the same students
    assert_same(student_params(workdir, steps),
                student_params(reference, steps))


FULL_DISK_SCRIPT = """
set -u
mount -t tmpfs -o size=3m tmpfs "$DISK"
"$@" 2> "$OUT/first.err"; echo $? > "$OUT/first.rc"
cp "$DISK/w/config.json" "$OUT/config.before"
cat /dev/zero > "$DISK/filler" 2> /dev/null  # not a byte left
"$@" --config.train.log_loss_every_steps=1 2> "$OUT/second.err"
echo $? > "$OUT/second.rc"
cp "$DISK/w/config.json" "$OUT/config.after"
rm "$DISK/filler"; mount -o remount,size=64m "$DISK"
"$@" 2> "$OUT/third.err"; echo $? > "$OUT/third.rc"
cp -a "$DISK/w" "$OUT/w"
"""


def can_mount_tmpfs() -> bool:
  return subprocess.run(['unshare', '-m', 'sh', '-c',
                         'mount -t tmpfs tmpfs /mnt'], capture_output=True,
                        check=False).returncode == 0


@pytest.mark.skipif(shutil.which('unshare') is None or not can_mount_tmpfs(),
                    reason='a full disk is a 3 MB tmpfs in a mount namespace '
                    '(unshare -m), which needs root')
def test_a_full_disk_ends_in_one_line_and_a_rerun_resumes(
    finished_workdir, tmp_path):
  """A real full disk (tmpfs): the save that fills it, then a rerun before
  space is freed (config.json and event files cannot be written), then one
  after: one line each time, nothing lost, and the same student."""
  reference, _ = finished_workdir
  disk, out = tmp_path / 'disk', tmp_path / 'out'
  disk.mkdir(), out.mkdir()
  cmd = main_cmd(disk / 'w', '--config.distillation.end_num_steps=4')
  result = subprocess.run(
      ['unshare', '-m', 'bash', '-c', FULL_DISK_SCRIPT, 'full-disk', *cmd],
      env=dict(subprocess_env(), DISK=str(disk), OUT=str(out)),
      capture_output=True, text=True, timeout=900, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  errors = {run: (out / f'{run}.err').read_text()
            for run in ('first', 'second', 'third')}
  codes = {run: int((out / f'{run}.rc').read_text()) for run in errors}
  assert codes == {'first': 1, 'second': 1, 'third': 0}, errors
  for run in ('first', 'second'):
    assert 'Traceback' not in errors[run], errors[run][-3000:]
    assert 'never retrieved' not in errors[run]
    assert [l for l in errors[run].splitlines() if l.startswith('E')] == []
  assert last_line(errors['first']) == (
      f'error: saving checkpoint {disk}/w/checkpoints/base/4 failed: no space '
      'left on device; the previous checkpoint is intact: free space and '
      'rerun to resume from it')
  assert last_line(errors['second']) == (
      f'error: {disk}/w/config.json: no space left on device; free space and '
      'rerun')
  assert 'base: resuming from step 2' in errors['third']
  # The failed rewrite of config.json left the previous one, whole.
  assert (out / 'config.after').read_bytes() == (
      out / 'config.before').read_bytes()
  assert_same(student_params(out / 'w', 4), student_params(reference, 4))


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
  assert 'no checkpoint after it was saved' in line
  assert 'learning_rate (now ' in line
  assert finite_checkpoints(workdir)


class Params:  # what the guard reads of a TrainState
  def __init__(self, value):
    self.params, self.ema_params = {'w': np.full(3, value)}, None


@pytest.mark.parametrize('skip, losses, error', [
    (False, [0.5, 0.4, float('nan')], 'the loss is nan'),
    (False, [0.5, 0.4, 3.6e21], 'the loss is 3.6e+21, far above any training '
     'loss (bound 4.85e+12)'),
    (False, [1e-3, 2e-3, 1e-3, 50.], 'the loss grew over 10000-fold, to 50'),
    (True, [0.5, float('nan'), 0.3, 1e22], 'the loss is 1e+22'),
    (True, [0.5, float('nan')], 'the loss is nan'),  # every update skipped
])
def test_divergence_is_a_loss_that_blew_up_finite_or_not(skip, losses,
                                                           error):
  config = tiny_config(train__enable_update_skip=skip)
  guard = divergence.Guard(config, stages.plan_stages(config)[0])
  *healthy, bad = losses
  for step, loss in enumerate(healthy):  # a NaN here: some updates skipped
    assert guard.check(step, Params(1.), {'loss': loss, 'skipped': .5}) is loss
  with pytest.raises(divergence.DivergenceError) as raised:
    guard.check(9, Params(1.), {'loss': bad, 'skipped': 1.})
  assert f'base diverged at step 9: {error}' in str(raised.value)
  assert ('enable_update_skip' in str(raised.value)) == (
      not skip and not np.isfinite(bad))
  with pytest.raises(divergence.DivergenceError, match='parameters hold NaN'):
    guard.check(10, Params(np.inf), {'loss': 0.5})


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
    finished_workdir, tmp_path, monkeypatch):
  reference, _ = finished_workdir
  workdir = copy_of(reference, tmp_path)
  # A run stopped after it recorded the longer teacher (here: its dashboards
  # hit a full disk) has already set the students aside.
  def full_disk(*args):
    raise OSError(28, 'No space left on device')
  monkeypatch.setattr(loop, 'write_dashboards', full_disk)
  with pytest.raises(OSError):
    loop.run(tiny_config(train__num_train_steps=6), str(workdir))
  monkeypatch.undo()
  assert json.loads((workdir / 'config.json').read_text())['train'][
      'num_train_steps'] == 6
  assert not (workdir / 'checkpoints' / 'distill_4').exists()

  summary = loop.run(tiny_config(train__num_train_steps=6), str(workdir))
  assert summary[0]['stage'] == 'base' and summary[0]['num_updates'] == 6
  stale = workdir / 'checkpoints' / 'stale'
  assert sorted(os.listdir(stale)) == ['distill_1', 'distill_2', 'distill_4']
  new = student_params(workdir, 1)
  old = student_params(reference, 1)
  assert any(not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(new), jax.tree.leaves(old)))


def test_a_stop_asked_for_during_a_stage_ends_the_run_before_its_grid(
    finished_workdir, tmp_path, monkeypatch):
  workdir = copy_of(finished_workdir[0], tmp_path)
  shutil.rmtree(workdir / 'samples')
  finished_stage = finished_stages.finished_stage

  def preempted_meanwhile(ctx, stage):
    preemption._on_signal(signal.SIGTERM, None)  # pylint: disable=protected-access
    return finished_stage(ctx, stage)

  monkeypatch.setattr(finished_stages, 'finished_stage', preempted_meanwhile)
  with pytest.raises(preemption.Preempted,
                     match='preempted: checkpoint saved at base step 4'):
    loop.run(tiny_config(), str(workdir))
  assert not (workdir / 'samples').exists()


def test_checkpoints_without_their_config_json_are_refused(
    finished_workdir, tmp_path):
  workdir = copy_of(finished_workdir[0], tmp_path)
  (workdir / 'config.json').unlink()
  with pytest.raises(ConfigError, match=(
      r'holds checkpoints \(base, distill_1, distill_2, distill_4\) but no '
      r'config.json \(deleted\?\)')):
    loop.check_workdir(tiny_config(), workdir)


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
