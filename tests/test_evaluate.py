"""evaluate: quality-vs-steps tables for students and teacher.

The workdirs are built without training: config.json plus a final checkpoint
per stage (written with the real StageCheckpoints, at step `num_updates`, with
the meta `loop.run_stage` records) holding random parameters, so
`workdirs.open_workdir` sees every stage as finished. The network is a
tiny UNet, so sampling and its compilation take seconds. No expected metric
values are hard-coded: the checks are structure, finiteness, ranges, and
agreement between the files, the returned rows and independent computations.
"""

import json
import math
import os
from pathlib import Path
import shutil
import signal
import subprocess

import jax
import numpy as np
import pytest

from diffusion_distillation import files
from diffusion_distillation.evaluation import comparison
from diffusion_distillation.evaluation import evaluate
from diffusion_distillation.evaluation import report
from diffusion_distillation.evaluation import scorers
from diffusion_distillation.evaluation import settings
from diffusion_distillation.models import diffusion_model as model_lib
from diffusion_distillation.models import generation
from diffusion_distillation.pipeline import checkpoints
from diffusion_distillation.pipeline import loop
from diffusion_distillation.pipeline import optimization
from diffusion_distillation.pipeline import stages
from diffusion_distillation.pipeline import train_state
from diffusion_distillation.pipeline import workdir_lock
from diffusion_distillation.pipeline import workdirs

from helpers import PYTHON
from helpers import random_params
from helpers import REPO
from helpers import tiny_config

pytestmark = pytest.mark.heavy  # processes, training: not the fast tier

NUM_SAMPLES = 12
INCEPTION_DIVISOR = 16  # every Inception width / 16: a fast forward pass


@pytest.fixture(autouse=True, scope='module')
def _one_blas_thread():
  """scipy's sqrtm is ~10x slower when OpenBLAS threads fight over 2 busy
  cores; the matrices here are small."""
  import threadpoolctl  # pylint: disable=g-import-not-at-top
  with threadpoolctl.threadpool_limits(limits=1, user_api='blas'):
    yield


def eval_config(dataset='digits'):
  """The suite's tiny config, distilling 4 -> 2 -> 1 sampler steps."""
  config = tiny_config(distillation__start_num_steps=4,
                       distillation__steps_per_iter=2,
                       eval__num_samples=NUM_SAMPLES,
                       eval__batch_size=NUM_SAMPLES)
  if dataset != 'digits':
    config.dataset.name = dataset
    config.dataset.args.class_conditional = True
    config.eval.metric = 'inception'
  return config


def make_finished_workdir(workdir, config, data_shape, num_classes):
  """config.json and a final checkpoint per stage, as `loop.run` leaves them.

  Each stage's TrainState sits at step `num_updates` with the meta record
  `loop.run_stage` writes; parameters are random, optimizer state zero.
  """
  loop.record_config(config, workdir)
  model = model_lib.DiffusionModel.from_config(config, data_shape, num_classes)
  for stage in stages.plan_stages(config):
    params = random_params(model, seed=stage.index)
    opt = optimization.optimization_for(config, stage)
    shapes = jax.eval_shape(
        lambda p: train_state.create(p, opt.tx, stage.num_sample_steps), params)
    state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes).replace(
        step=np.int32(stage.num_updates), params=params, ema_params=params,
        num_sample_steps=np.int32(stage.num_sample_steps))
    meta = {'stage': stage.name, 'num_sample_steps': stage.num_sample_steps,
            'num_updates': stage.num_updates, 'loss': 0.5,
            'data_shape': list(data_shape), 'num_classes': num_classes}
    manager = checkpoints.StageCheckpoints(
        checkpoints.stage_dir(workdir, stage.name))
    manager.save(state, meta)
    manager.close()
  return workdir


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('cache'))


@pytest.fixture(scope='module')
def digits_workdir(tmp_path_factory):
  return make_finished_workdir(tmp_path_factory.mktemp('digits'),
                               eval_config(), (8, 8, 1), 1)


EXPECTED_ROWS = [('distilled', 'ddim', 2), ('distilled', 'ddim', 1),
                 ('teacher', 'ddim', 1), ('teacher', 'ddim', 2),
                 ('teacher', 'ddim', 4), ('teacher', 'ancestral', 1),
                 ('teacher', 'ancestral', 2), ('teacher', 'ancestral', 4)]


def _keys(results):
  return [(r['model'], r['sampler'], r['steps']) for r in results['rows']]


def check_rows(results):
  assert _keys(results) == EXPECTED_ROWS
  for row in results['rows']:
    assert math.isfinite(row['digits_fd']) and row['digits_fd'] >= 0
    assert 1 <= row['digits_is'] <= 10
    assert row['seconds'] >= row['sample_seconds'] >= 0
  # Each row samples its own model: a student differs from the teacher at its
  # step count, and the two samplers differ.
  fd = {key: r['digits_fd'] for key, r in zip(_keys(results), results['rows'])}
  assert fd[('distilled', 'ddim', 2)] != fd[('teacher', 'ddim', 2)]
  assert fd[('teacher', 'ddim', 4)] != fd[('teacher', 'ancestral', 4)]
  assert results['metric_names'] == ['digits_fd', 'digits_is']
  assert results['num_samples'] == NUM_SAMPLES  # config.eval
  assert results['teacher_steps'] == [1, 2, 4]  # up to teacher_max_steps
  assert results['student_steps'] == [1, 2]
  assert results['complete'] and results['seconds'] > 0


def check_files(workdir, results):
  out = Path(workdir) / 'eval'
  assert json.loads((out / 'results.json').read_text()) == json.loads(
      json.dumps(results))
  png = (out / 'quality_vs_steps.png').read_bytes()
  assert png.startswith(b'\x89PNG') and len(png) > 5000
  md = (out / 'results.md').read_text()
  assert md == report.format_markdown(results)
  assert '### digits_fd (lower is better)' in md
  assert '### digits_is (higher is better)' in md
  tables = [block for block in md.split('\n\n') if block.startswith('|')]
  assert len(tables) == 2
  values = dict(zip(_keys(results), results['rows']))
  for table, name in zip(tables, ('digits_fd', 'digits_is')):
    lines = table.splitlines()
    assert lines[0] == ('| NFE | distilled | teacher DDIM | '
                        'teacher ancestral | best within this NFE |')
    assert lines[1] == '|---:|---:|---:|---:|---|'
    cells = [[c.strip() for c in line.strip('|').split('|')]
             for line in lines[2:]]
    assert [c[0] for c in cells] == ['1', '2', '4']
    assert cells[2][1] == ''  # no student samples with 4 steps
    columns = [('distilled', 'ddim'), ('teacher', 'ddim'),
               ('teacher', 'ancestral')]
    for i, steps in enumerate((1, 2, 4)):
      for j, column in enumerate(columns):
        if (*column, steps) in values:
          assert float(cells[i][j + 1]) == pytest.approx(
              values[(*column, steps)][name], rel=2e-3, abs=1e-3)
      # The best at this cost or less: the lowest distance, the highest
      # score.
      within = {(*c, n): values[(*c, n)][name] for c in columns
                for n in (1, 2, 4) if n <= steps and (*c, n) in values}
      best = (min if name == 'digits_fd' else max)(within, key=within.get)
      assert cells[i][-1] == f'{report.column_name(*best[:2])} ({best[2]})'


def test_digits_evaluation(digits_workdir, cache_dir, monkeypatch, capsys):
  """All rows, the files, one compile per sampler, then flag overrides.

  One test rather than several, so that pytest-xdist cannot spread the
  expensive part over both workers.
  """
  # Other test files in this process may have compiled samplers of an equal
  # model (same tiny config) for other batch shapes.
  generation.compiled_sampler.cache_clear()
  results = evaluate.run_evaluation(digits_workdir, cache_dir=cache_dir)
  check_rows(results)
  check_files(digits_workdir, results)
  assert capsys.readouterr().out.strip() == report.format_markdown(
      results).strip()

  # Students and teacher shared one compiled DDIM program across all step
  # counts, and ancestral sampling compiled once.
  loaded = workdirs.open_workdir(digits_workdir)
  for sampler in ('ddim', 'ancestral'):
    fn = generation.compiled_sampler(loaded.model, sampler, loaded.mesh)
    assert fn._cache_size() == 1

  # Overrides; the cached classifier is reused, not retrained.
  from diffusion_distillation.evaluation.metrics import digits_classifier

  def fail(*args, **kwargs):
    raise AssertionError('the cached classifier was not reused')

  monkeypatch.setattr(digits_classifier, 'train_digits_classifier', fail)
  again = evaluate.run_evaluation(
      digits_workdir, samplers='ancestral', teacher_steps=[2], seed=3,
      cache_dir=cache_dir, print_table=False)
  assert _keys(again) == [('distilled', 'ddim', 2), ('distilled', 'ddim', 1),
                          ('teacher', 'ancestral', 2)]
  assert again['seed'] == 3 and again['samplers'] == ['ancestral']
  assert again['rows'][0]['digits_fd'] != results['rows'][0]['digits_fd']
  md = (Path(digits_workdir) / 'eval' / 'results.md').read_text()
  assert '| NFE | distilled | teacher ancestral | best within this NFE |' in md


def test_an_interrupted_evaluation_keeps_the_previous_results(
    digits_workdir, cache_dir, monkeypatch):
  out = Path(digits_workdir) / 'eval'
  kwargs = dict(samplers='ddim', teacher_steps='none', num_samples=8,
                cache_dir=cache_dir, print_table=False)
  evaluate.run_evaluation(digits_workdir, **kwargs)
  before = {name: (out / name).read_bytes() for name in (
      report.RESULTS_JSON, report.RESULTS_MD, report.PLOT_PNG)}
  scored = evaluate._evaluate_row
  calls = []

  def interrupted(*args, **kw):
    if calls:
      raise KeyboardInterrupt  # Ctrl-C during the second row
    calls.append(1)
    return scored(*args, **kw)

  monkeypatch.setattr(evaluate, '_evaluate_row', interrupted)
  with pytest.raises(KeyboardInterrupt):
    evaluate.run_evaluation(digits_workdir, **{**kwargs, 'seed': 1})
  assert {name: (out / name).read_bytes() for name in before} == before
  partial = json.loads((out / report.PARTIAL_JSON).read_text())
  assert not partial['complete'] and len(partial['rows']) == 1
  assert not [p.name for p in out.iterdir()
              if p.name.startswith(files.TEMP_PREFIX)]
  monkeypatch.setattr(evaluate, '_evaluate_row', scored)
  evaluate.run_evaluation(digits_workdir, **kwargs)  # complete: replaces them
  assert not (out / report.PARTIAL_JSON).exists()
  assert not (out / report.PARTIAL_MD).exists()


def test_training_does_not_evaluate_again_what_has_not_changed(
    digits_workdir, cache_dir, monkeypatch):
  """Was: every rerun of a finished `main` evaluated everything again."""
  kwargs = dict(samplers='ddim', teacher_steps='none', num_samples=8,
                cache_dir=cache_dir, print_table=False, only_if_changed=True)
  first = evaluate.run_evaluation(digits_workdir, **kwargs)

  def sampled(*args, **kw):
    raise AssertionError('evaluated again')

  monkeypatch.setattr(evaluate, '_evaluate_row', sampled)
  again = evaluate.run_evaluation(digits_workdir, **kwargs)
  assert again == json.loads(json.dumps(first))
  with pytest.raises(AssertionError, match='evaluated again'):  # other seed
    evaluate.run_evaluation(digits_workdir, **{**kwargs, 'seed': 1})


def test_one_evaluation_at_a_time(digits_workdir, cache_dir):
  """Was: two evaluations raced over WORKDIR/eval."""
  with workdir_lock.hold(Path(digits_workdir) / 'eval'):
    with pytest.raises(workdir_lock.WorkdirInUseError, match=(
        rf'^{digits_workdir}/eval is in use by process {os.getpid()} on host '
        '.*; wait for it or stop it$')):
      evaluate.run_evaluation(digits_workdir, samplers='ddim',
                              teacher_steps='none', cache_dir=cache_dir)


def test_compare_puts_the_students_of_other_workdirs_in_one_table(
    digits_workdir, cache_dir, tmp_path):
  """`evaluate --compare`: another run distilled from this workdir's teacher
  (here its students are other random parameters) joins the table; a
  column's name that two workdirs share ends in its workdir's name."""
  config = eval_config()
  config.distillation.teacher_checkpoint_path = str(digits_workdir)
  other = make_finished_workdir(tmp_path / 'other', config, (8, 8, 1), 1)
  kwargs = dict(samplers='ddim', teacher_steps='1', num_samples=8,
                cache_dir=cache_dir, print_table=False)
  combined = comparison.run_comparison(digits_workdir, [str(other)], **kwargs)
  alone = evaluate.run_evaluation(digits_workdir, **kwargs)
  theirs = evaluate.run_evaluation(other, **{**kwargs, 'teacher_steps': 'none'})
  untimed = lambda rows: [{k: v for k, v in r.items() if 'seconds' not in k}
                          for r in rows]
  assert untimed(combined['rows']) == untimed(
      alone['rows'][:2] + [dict(r, workdir=str(other)) for r in theirs['rows']]
      + alone['rows'][2:])  # the students first
  assert combined['same_teacher'] and combined['compared'] == [str(other)]
  assert [r['method'] for r in theirs['rows']] == ['progressive'] * 2
  table = (Path(digits_workdir) / 'eval' / 'comparison.md').read_text()
  assert '| NFE | distilled | distilled (other) | teacher DDIM |' in table
  assert 'with the students of ' + str(other) + ', from the same teacher' in (
      table)
  assert (Path(digits_workdir) / 'eval' / 'comparison.png').stat().st_size
  with pytest.raises(settings.EvalError, match='already the evaluated'):
    comparison.run_comparison(digits_workdir, [str(digits_workdir)], **kwargs)


def test_a_deleted_stage_is_reported(digits_workdir, cache_dir, tmp_path,
                                     caplog):
  """Was: one row fewer, without a word."""
  workdir = tmp_path / 'wd'
  shutil.copytree(digits_workdir, workdir)
  shutil.rmtree(checkpoints.stage_dir(workdir, 'distill_2'))
  results = evaluate.run_evaluation(workdir, samplers='ddim',
                                    teacher_steps='none', num_samples=8,
                                    cache_dir=cache_dir, print_table=False)
  assert _keys(results) == [('distilled', 'ddim', 1)]
  assert results['missing_students'] == [2]
  assert ('NOT EVALUATED: the student(s) for 2 steps (their checkpoints are '
          'missing)') in (workdir / 'eval' / report.RESULTS_MD).read_text()
  assert ('stage distill_2 has no final checkpoint though later stages '
          'finished') in caplog.text
  with pytest.raises(workdirs.WorkdirError, match='no student distilled for '
                     '2 steps in .*; its checkpoints are missing'):
    workdirs.open_workdir(workdir).student_params(2)


def test_bad_requests(digits_workdir, cache_dir, tmp_path, monkeypatch):
  run = lambda **kw: evaluate.run_evaluation(digits_workdir,
                                             cache_dir=cache_dir, **kw)
  with pytest.raises(settings.EvalError, match="samplers: holds 'euler'"):
    run(samplers=['ddim', 'euler'])
  with pytest.raises(settings.EvalError, match='teacher_steps'):
    run(teacher_steps='1,0')
  with pytest.raises(settings.EvalError, match='num_samples'):
    run(num_samples=1)
  with pytest.raises(settings.EvalError, match='metric'):
    run(metric='fid')
  with pytest.raises(settings.EvalError, match='no config.json'):
    evaluate.run_evaluation(tmp_path / 'nothing', cache_dir=cache_dir)
  # The weights are checked before anything is sampled; offline, with none
  # given and none cached, the error says where to put them.
  monkeypatch.setenv('DD_INCEPTION_URL', 'http://127.0.0.1:9/x.tgz')
  with pytest.raises(settings.EvalError, match='could not download.*Put '
                     'classify_image_graph_def.pb at .*inception-2015-12-05'):
    run(metric='inception', inception_path='')
  with pytest.raises(settings.EvalError, match='not found.*tar xzf'):
    run(metric='inception', inception_path=str(tmp_path / 'missing.pb'))


def test_no_finished_stage(tmp_path, cache_dir):
  loop.record_config(eval_config(), tmp_path)
  with pytest.raises(workdirs.WorkdirError, match='no finished stage'):
    evaluate.run_evaluation(tmp_path, cache_dir=cache_dir)


def test_markdown_and_plot_helpers():
  rows = [dict(model='distilled', sampler='ddim', steps=1, fid=12.5, **{
      'is': 7.0}), dict(model='teacher', sampler='ddim', steps=1, fid=None,
                        **{'is': None}),
          dict(model='teacher', sampler='ddim', steps=256, fid=3.2, **{
              'is': 9.1})]
  results = dict(workdir='w', dataset='cifar10', metric_names=['fid', 'is'],
                 num_samples=50000, seed=0, rows=rows, complete=False)
  md = report.format_markdown(results)
  assert '| 1 | 12.50 | - |' in md and '| 256 |  | 3.200 |' in md
  assert 'INCOMPLETE' in md
  assert report.plot_png(results).startswith(b'\x89PNG')
  assert settings.powers_of_two(128) == (1, 2, 4, 8, 16, 32, 64, 128)
  assert settings.powers_of_two(6) == (1, 2, 4)
  assert settings.parse_int_list('4,1,2,2', 'x') == (1, 2, 4)
  assert settings.parse_int_list('none', 'x') == ()


# --- Command line -------------------------------------------------------------


def _cli(*args):
  return subprocess.run(
      [PYTHON, '-m', 'diffusion_distillation.evaluate', *args], cwd=REPO,
      capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize('args, message', [
    ([], '--workdir is required'),
    (['--workdir=W', '--samplers=ddim,euler'],
     "--samplers=ddim,euler: samplers: holds 'euler': must be one of `ddim`"),
    (['--workdir=W', '--samplers='], 'samplers: needs at least one value'),
    (['--workdir=W', '--teacher_steps=1,two'], "'two' is not an integer"),
    (['--workdir=W', '--teacher_steps=4,0'], 'must be >= 1'),
    (['--workdir=W', '--num_samples=1'], '--num_samples=1'),
    (['--workdir=W', '--metric=fid'], '--metric'),
    (['--workdir=/nonexistent/run'], 'not a training workdir'),
])
def test_cli_bad_input(args, message):
  """One error line, ours (`error: `) or absl's flag error (then its hint)."""
  proc = _cli(*args)
  assert proc.returncode != 0
  assert 'Traceback' not in proc.stderr
  lines = proc.stderr.strip().splitlines()[-2:]
  errors = [line for line in lines if line.startswith(
      ('error: ', 'FATAL Flags parsing error: '))]
  assert len(errors) == 1 and message in errors[0], proc.stderr


# --- FID on a CIFAR-10-shaped workdir (mock data, synthetic weights) ----------


def synthetic_inception_npz(path, divisor, seed=0):
  """Random weights with the graph's tensor names, activations kept O(1)."""
  from diffusion_distillation.evaluation.metrics import inception
  rng = np.random.default_rng(seed)
  arrays = {}
  for name, shape in inception.expected_shapes(divisor).items():
    leaf = name.rsplit('/', 1)[-1]
    if leaf == 'conv2d_params':
      value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:3]))
    elif leaf in ('moving_variance', 'gamma'):
      value = rng.uniform(0.5, 1.5, shape)
    else:
      value = rng.standard_normal(shape) * 0.1
    arrays[name] = value.astype(np.float32)
  np.savez(path, **arrays)
  return str(path)


def test_fid_on_mock_cifar10(tmp_path, monkeypatch):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  from diffusion_distillation import data as data_lib
  from diffusion_distillation.evaluation.metrics import frechet
  from diffusion_distillation.evaluation.metrics import inception
  data_lib.import_tensorflow()  # hides the GPUs from TensorFlow first
  config = eval_config('cifar10')
  workdir = make_finished_workdir(tmp_path / 'cifar', config, (32, 32, 3), 10)
  weights = synthetic_inception_npz(tmp_path / 'inception.npz',
                                    INCEPTION_DIVISOR)
  cache = str(tmp_path / 'cache')
  kwargs = dict(num_samples=6, samplers=['ddim'], teacher_steps=[1],
                inception_path=weights, cache_dir=cache, print_table=False,
                inception_divisor=INCEPTION_DIVISOR)
  with tfds.testing.mock_data(num_examples=10,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    results = evaluate.run_evaluation(workdir, **kwargs)
  assert results['metric_names'] == ['fid', 'is']
  assert _keys(results) == [('distilled', 'ddim', 2), ('distilled', 'ddim', 1),
                            ('teacher', 'ddim', 1)]
  for row in results['rows']:
    assert math.isfinite(row['fid']) and row['fid'] > 0
    assert 1 - 1e-6 <= row['is'] <= 6  # at most the number of samples
  assert results['metric_info']['reference_num_examples'] == 10
  stats = list(Path(cache, 'fid_stats').iterdir())
  assert [p.name.rsplit('_', 1)[0] for p in stats] == ['cifar10_train_all']
  md = (workdir / 'eval' / 'results.md').read_text()
  assert '### fid (lower is better)' in md and '### is (higher is better)' in md
  assert '| NFE | distilled | teacher DDIM | best within this NFE |' in md

  # Later runs read the cached reference statistics (no data set needed).
  monkeypatch.setattr(data_lib, 'get_dataset', lambda *a, **k: 1 / 0)
  again = evaluate.run_evaluation(workdir, **{**kwargs, 'teacher_steps': 'none'})
  assert [r['fid'] for r in again['rows']] == pytest.approx(
      [r['fid'] for r in results['rows'][:2]], rel=1e-5)

  # The metric's wiring: FID of pool3 against the cached train statistics;
  # IS from the logits without the softmax bias, as the original IS code.
  resolved = settings.resolve_settings(config, num_samples=6,
                                       inception_path=weights, cache_dir=cache)
  metric = scorers.inception_metric(config, resolved, INCEPTION_DIVISOR)
  images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), np.uint8)
  net = inception.load_inception(weights, divisor=INCEPTION_DIVISOR)
  out = scorers.local_inception(net.module, net.params, 6)(images)
  calls = []
  score_fn = frechet.inception_score
  monkeypatch.setattr(frechet, 'inception_score', lambda x, **kw: (
      calls.append((np.asarray(x), kw)) or score_fn(x, **kw)))
  got = metric.compute(images)
  mu_ref, sigma_ref, _ = frechet.load_stats(stats[0])
  assert got['fid'] == pytest.approx(frechet.frechet_distance(
      *frechet.stats_from_features(out['pool3']), mu_ref, sigma_ref), rel=1e-6)
  (logits, kw), = calls
  np.testing.assert_allclose(logits, out['logits_unbiased'], rtol=1e-5,
                             atol=1e-5)
  assert kw == dict(splits=6, from_logits=True)


def test_cli_stopped_by_sigterm_ends_in_one_line(digits_workdir, cache_dir):
  proc = subprocess.Popen(
      [PYTHON, '-m', 'diffusion_distillation.evaluate',
       f'--workdir={digits_workdir}', f'--cache_dir={cache_dir}',
       '--num_samples=100000', '--samplers=ddim', '--teacher_steps=none'],
      cwd=REPO, stderr=subprocess.PIPE, text=True)
  lines = []
  for line in proc.stderr:  # until the rows start
    lines.append(line)
    if ' rows, ' in line:
      break
  proc.send_signal(signal.SIGTERM)
  rest = proc.stderr.read()
  assert proc.wait(timeout=120) == 143, ''.join(lines) + rest
  assert 'Traceback' not in rest
  assert rest.strip().splitlines()[-1] == (
      'terminated (SIGTERM); rerun the same command to start again (a '
      'training run resumes from its last checkpoint)')
