"""A run you can watch: progress lines with ETAs, and what TensorBoard shows.

One tiny digits run through the command line (teacher, three distillation
stages, evaluation) gives the log a user reads and the event files
TensorBoard reads; they are read back with TensorBoard's own loader.
"""

import json
import os
import re
import subprocess
import time
import urllib.request

import numpy as np
import pytest

from diffusion_distillation.models import images

from diffusion_distillation.pipeline import progress
from diffusion_distillation.pipeline.stages import Stage

from helpers import free_port
from helpers import override_flags
from helpers import PYTHON
from helpers import REPO
from helpers import subprocess_env

pytestmark = pytest.mark.heavy  # processes, training: not the fast tier

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
                 'eval.teacher_max_steps': 2,
                 'eval.samplers': ('ddim', 'ancestral', 'heun')})]
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
  # The teacher's steps as the summary table gives them (its sampler's).
  assert 'base: 4 updates, sampler steps 8' in output
  # The teacher's rate stands in for the students' until one is measured.
  assert 'run ETA ~' in lines[1] and lines[1].endswith('(estimate)')
  assert not lines[-1].endswith('(estimate)')
  assert 'Setting work unit notes' not in output


def test_the_parameter_tables_go_to_files_with_a_line_in_the_log(watched_run):
  workdir, output = watched_run
  for name in STAGES:
    table = workdir / 'checkpoints' / name / 'parameters.txt'
    assert re.search(rf'{name} parameters: [\d,]+ -- [\d,]+ bytes \(each in '
                     rf'{re.escape(str(table))}\)', output)
    assert '| conv_in/kernel' in table.read_text()
  assert '| conv_in/kernel' not in output


def test_run_eta_adds_each_later_stage_updates_and_overhead():
  base = Stage(0, 'base', 100, 0, 'teacher')
  students = [Stage(1, 'distill_4', 10, 4, 'progressive'),
              Stage(2, 'distill_2', 10, 2, 'progressive')]
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
    assert [e.value for e in acc.Scalars('log10_loss')] == pytest.approx(
        [np.log10(e.value) for e in acc.Scalars('loss')], rel=1e-5)
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
  start = plugin_data_pb2.HParamsPluginData.FromString(
      content).session_start_info
  hparams = start.hparams
  assert start.group_name == 'distill_2'  # one session per stage
  assert hparams['stage'].string_value == 'distill_2'
  assert hparams['sampler_steps'].number_value == 2
  assert hparams['learning_rate'].number_value == pytest.approx(1e-3)
  assert hparams['train.batch_size'].number_value == 8
  assert hparams['distillation.start_num_steps'].number_value == 8
  assert hparams['dataset.name'].string_value == 'digits'


def test_eval_scalars_against_network_evaluations(watched_run):
  workdir, _ = watched_run
  with open(workdir / 'eval' / 'results.json') as f:
    rows = json.load(f)['rows']
  for column, model, sampler in (('distilled', 'distilled', 'ddim'),
                                 ('teacher_ddim', 'teacher', 'ddim'),
                                 ('teacher_ancestral', 'teacher',
                                  'ancestral'),
                                 ('teacher_heun', 'teacher', 'heun')):
    expected = {r['nfe']: r['digits_fd'] for r in rows
                if (r['model'], r['sampler']) == (model, sampler)}
    acc = _accumulator(workdir / 'tensorboard' / 'eval' / column)
    events = acc.Scalars('quality/digits_fd')
    assert [e.step for e in events] == sorted(expected)  # one file, ascending
    assert {e.step: pytest.approx(e.value, rel=1e-5) for e in events} == {
        k: pytest.approx(v, rel=1e-5) for k, v in expected.items()}
    assert len(list((workdir / 'tensorboard' / 'eval' / column).iterdir())) == 1
  for stage in STAGES[1:]:  # each student at its own steps, for HParams
    acc = _accumulator(workdir / 'tensorboard' / stage)
    steps = int(stage.split('_')[1])
    (event,) = acc.Scalars('final/digits_fd')
    assert event.value == pytest.approx(expected_row(rows, steps), rel=1e-5)


def expected_row(rows, steps):
  (row,) = [r for r in rows if (r['model'], r['sampler'], r['steps']) == (
      'distilled', 'ddim', steps)]
  return row['digits_fd']


def _get(port, path, body=None):
  request = urllib.request.Request(
      f'http://127.0.0.1:{port}{path}',
      data=None if body is None else json.dumps(body).encode(),
      headers={'Content-Type': 'application/json'})
  with urllib.request.urlopen(request, timeout=30) as response:
    return json.loads(response.read())


@pytest.fixture(scope='module')
def tensorboard_port(watched_run):
  """TensorBoard (the project's dependency, its default loader) serving the
  watched run, on localhost."""
  workdir, _ = watched_run
  port = free_port()
  proc = subprocess.Popen(
      [os.path.join(os.path.dirname(PYTHON), 'tensorboard'),
       f'--logdir={workdir / "tensorboard"}', f'--port={port}',
       '--host=127.0.0.1'], stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 120
    while True:  # until the server is up and has read the evaluation
      assert proc.poll() is None and time.time() < deadline
      try:
        if 'eval/distilled' in _get(port, '/data/runs'):
          break
      except OSError:
        pass
      time.sleep(0.5)
    yield port
  finally:
    proc.kill()
    proc.wait()


def test_tensorboard_shows_every_point_one_chart_and_a_session_per_stage(
    watched_run, tensorboard_port):
  workdir, _ = watched_run
  port = tensorboard_port
  with open(workdir / 'eval' / 'results.json') as f:
    rows = json.load(f)['rows']
  # Every student's point survives the default loader (they are measured
  # most steps first).
  points = _get(port, '/data/plugin/scalars/scalars?run=eval/distilled'
                '&tag=quality/digits_fd')
  assert [p[1] for p in points] == [1, 2, 4]
  assert [p[2] for p in points] == pytest.approx(
      [expected_row(rows, n) for n in (1, 2, 4)], rel=1e-5)
  # Distilled and teacher curves: one tag, so one chart, in the layout.
  tags = _get(port, '/data/plugin/scalars/tags')
  assert {run for run, t in tags.items() if 'quality/digits_fd' in t} == {
      'eval/distilled', 'eval/teacher_ddim', 'eval/teacher_ancestral',
      'eval/teacher_heun'}
  (category,) = _get(port, '/data/plugin/custom_scalars/layout')['category']
  charts = {c['title']: c['multiline']['tag'] for c in category['chart']}
  assert charts['digits_fd vs network evaluations (x axis: NFE)'] == [
      '^quality/digits_fd$']
  # HParams: one session per stage, with its final loss and, for a student,
  # its quality at its own step count; the stage's columns come first.
  experiment = _get(port, '/data/plugin/hparams/experiment',
                    {'experimentName': ''})
  assert [h['name'] for h in experiment['hparamInfos'][:5]] == [
      'learning_rate', 'model.mean_type', 'sampler_steps', 'stage',
      'train.batch_size']
  groups = _get(port, '/data/plugin/hparams/session_groups', {
      'experimentName': '', 'startIndex': 0, 'sliceSize': 100,
      'allowedStatuses': ['STATUS_UNKNOWN', 'STATUS_SUCCESS',
                          'STATUS_FAILURE', 'STATUS_RUNNING'],
      'colParams': []})['sessionGroups']
  sessions = {g['hparams']['stage']: {m['name']['tag']: m['value']
                                      for m in g['metricValues']}
              for g in groups}
  assert sorted(sessions) == sorted(STAGES)
  assert all('loss' in metrics for metrics in sessions.values())
  for stage in STAGES[1:]:
    assert sessions[stage]['final/digits_fd'] == pytest.approx(
        expected_row(rows, int(stage.split('_')[1])), rel=1e-5)


def test_dashboard_grids_are_integer_upscaled_to_fit():
  samples = np.zeros((64, 8, 8, 1), np.uint8)
  grid = images.dashboard_grid(samples)
  assert grid.shape == (146, 146, 1)  # 8 x (8 + 1) x 2 + 2: scale 2
  assert grid.shape[1] <= images.DASHBOARD_WIDTH
  cifar = images.dashboard_grid(np.zeros((64, 32, 32, 3), np.uint8))
  assert cifar.shape[:2] == (265, 265)  # no upscaling fits: as it is
