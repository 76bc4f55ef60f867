"""A run you can watch: progress lines with ETAs, and what TensorBoard shows.

One tiny digits run through the command line (teacher, three distillation
stages, evaluation) gives the log a user reads and the event files
TensorBoard reads; they are read back with TensorBoard's own loader.
"""

import json
import re
import subprocess

import pytest

from diffusion_distillation.pipeline import progress
from diffusion_distillation.pipeline import stages
from diffusion_distillation.pipeline.stages import Stage

from helpers import override_flags
from helpers import PYTHON
from helpers import REPO
from helpers import subprocess_env

STAGES = ['base', 'distill_4', 'distill_2', 'distill_1']
# Runs the `main` command in a Python that says at exit whether anything
# imported TensorFlow.
_MAIN = ('import runpy, sys\n'
         'try:\n'
         '  runpy.run_module("diffusion_distillation.main", '
         'run_name="__main__")\n'
         'finally:\n'
         '  print("tensorflow imported:", "tensorflow" in sys.modules, '
         'file=sys.stderr)\n')


@pytest.fixture(scope='module')
def watched_run(tmp_path_factory):
  """(workdir, combined output) of a tiny run with evaluation."""
  workdir = tmp_path_factory.mktemp('watched') / 'run'
  command = [PYTHON, '-c', _MAIN, '--config=configs/digits.py',
             f'--workdir={workdir}', *override_flags({
                 'eval.run_after_training': True, 'eval.num_samples': 16,
                 'eval.teacher_max_steps': 2})]
  result = subprocess.run(command, cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=600,
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result.stdout + result.stderr


def _accumulator(path):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  acc = event_accumulator.EventAccumulator(
      str(path), size_guidance={event_accumulator.IMAGES: 0,
                                event_accumulator.TENSORS: 0})
  acc.Reload()
  return acc


def test_progress_lines_say_stage_k_of_n_and_eta(watched_run):
  _, output = watched_run
  lines = [l for l in output.splitlines() if ' stage ' in l and '/4 ' in l]
  for k, name in enumerate(STAGES, start=1):
    first, last = [l for l in lines if f'stage {k}/4 {name}: ' in l]
    assert 'step 2/4 (50%)' in first and 'measuring speed' in first
    assert re.search(r'step 4/4 \(100%\), loss [0-9.e-]+, \d+ images/s, '
                     r'stage ETA \d+s, run ETA ~?\d+s', last), last
  # The teacher's rate stands in for the students' until one is measured.
  assert 'run ETA ~' in lines[1] and lines[1].endswith('(estimate)')
  assert not lines[-1].endswith('(estimate)')
  assert 'Setting work unit notes' not in output


def test_run_eta_adds_each_later_stage_updates_and_overhead():
  base = Stage(0, 'base', 100, 0, stages.TEACHER)
  students = [Stage(1, 'distill_4', 10, 4, stages.DISTILLATION),
              Stage(2, 'distill_2', 10, 2, stages.DISTILLATION)]
  run = progress.RunProgress([base, *students], batch_size=8)
  run.seconds_per_update[False] = 0.5
  run.startup[False] = 4.  # the teacher's compiling, while it trains
  assert run.remaining_after(base) == (2 * (10 * 0.5 + 4.), True)
  run.finished(base, 60.)  # 50 s of updates, 10 s compiling and the grid
  # The students' rate and overhead are not measured: the teacher's stand in.
  assert run.remaining_after(base) == (2 * (10 * 0.5 + 10.), True)
  run.seconds_per_update[True] = 0.2
  run.finished(students[0], 5.)  # 2 s of updates, 3 s besides
  assert run.remaining_after(students[0]) == (10 * 0.2 + 3., False)
  assert run.remaining_after(students[1]) == (0., False)


def test_evaluation_reports_rows_and_eta(watched_run):
  _, output = watched_run
  rows = re.findall(r'row (\d+)/(\d+)(, ETA \d+s)?: ', output)
  count = int(rows[0][1])
  assert [int(r[0]) for r in rows] == list(range(1, count + 1))
  assert all(r[2] for r in rows[1:])


def test_digits_run_never_imports_tensorflow(watched_run):
  _, output = watched_run
  assert 'tensorflow imported: False' in output
  assert 'oneDNN' not in output


def test_tensorboard_has_losses_grids_and_hparams(watched_run):
  workdir, _ = watched_run
  for stage in STAGES:
    acc = _accumulator(workdir / 'tensorboard' / stage)
    tags = acc.Tags()
    assert [e.step for e in acc.Scalars('loss')] == [2, 4]
    (image,) = tags['images']
    steps = 8 if stage == 'base' else int(stage.split('_')[1])
    assert image == f'samples/{steps}_steps'
    png = acc.Images(image)[0].encoded_image_string
    assert png.startswith(b'\x89PNG')
    assert '_hparams_/session_start_info' in tags['tensors']


def test_hparams_hold_the_flattened_config(watched_run):
  from tensorboard.plugins.hparams import plugin_data_pb2  # pylint: disable=g-import-not-at-top
  workdir, _ = watched_run
  acc = _accumulator(workdir / 'tensorboard' / 'distill_2')
  content = acc.SummaryMetadata(
      '_hparams_/session_start_info').plugin_data.content
  hparams = plugin_data_pb2.HParamsPluginData.FromString(
      content).session_start_info.hparams
  assert hparams['train.batch_size'].number_value == 8
  assert hparams['distillation.start_num_steps'].number_value == 8
  assert hparams['dataset.name'].string_value == 'digits'


def test_eval_scalars_against_sampler_steps(watched_run):
  workdir, _ = watched_run
  with open(workdir / 'eval' / 'results.json') as f:
    rows = json.load(f)['rows']
  acc = _accumulator(workdir / 'tensorboard' / 'eval')
  for column, model, sampler in (('distilled', 'distilled', 'ddim'),
                                 ('teacher_ddim', 'teacher', 'ddim'),
                                 ('teacher_ancestral', 'teacher',
                                  'ancestral')):
    expected = {r['steps']: r['digits_fd'] for r in rows
                if (r['model'], r['sampler']) == (model, sampler)}
    events = acc.Scalars(f'eval/digits_fd/{column}')
    assert {e.step: pytest.approx(e.value, rel=1e-5) for e in events} == {
        k: pytest.approx(v, rel=1e-5) for k, v in expected.items()}

