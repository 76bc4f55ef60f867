"""evaluate: quality-vs-steps tables for students and teacher.

The workdirs are built without training: config.json plus a final checkpoint
per stage (written with the real StageCheckpoints, at step `num_updates`, with
the meta `train.run_stage` records) holding randomly perturbed initial
parameters, so `workdir_models.open_workdir` sees every stage as finished. The
network is a tiny UNet, so sampling and its compilation take seconds.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_distillation import checkpointing
from diffusion_distillation import evaluate
from diffusion_distillation import model as model_lib
from diffusion_distillation import sample as sample_lib
from diffusion_distillation import train
from diffusion_distillation import train_state
from diffusion_distillation import workdir_models

REPO = Path(__file__).resolve().parents[1]
NUM_SAMPLES = 12
INCEPTION_DIVISOR = 16  # every Inception width / 16: a fast forward pass


def tiny_config(dataset='digits'):
  spec = importlib.util.spec_from_file_location('digits_config',
                                                REPO / 'configs' / 'digits.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.model.args.update(ch=32, ch_mult=(1,), num_res_blocks=1,
                           attn_resolutions=(), emb_ch=32)
  config.train.num_train_steps = 3
  config.distillation.start_num_steps = 4  # students for 2 and 1 steps
  config.distillation.steps_per_iter = 2
  config.eval.num_samples = NUM_SAMPLES
  config.eval.batch_size = NUM_SAMPLES
  if dataset != 'digits':
    config.dataset.name = dataset
    config.dataset.args.class_conditional = True
    config.eval.metric = 'inception'
  return config


def make_finished_workdir(workdir, config, data_shape, num_classes):
  """config.json and one final checkpoint per stage, without training."""
  train.record_config(config, workdir)
  model = model_lib.DiffusionModel.from_config(config, data_shape, num_classes)
  init = model.init_params(jax.random.PRNGKey(0))
  for stage in train.plan_stages(config):
    # Distinct, non-zero outputs per stage (the UNet's output conv starts at
    # zero, which would make every stage the same function).
    leaves, treedef = jax.tree.flatten(init)
    keys = jax.random.split(jax.random.PRNGKey(100 + stage.index), len(leaves))
    params = jax.tree.unflatten(treedef, [
        p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    opt = train.optimization_for(config, stage)
    state = train_state.create(params, opt.tx, stage.num_sample_steps).replace(
        step=jnp.asarray(stage.num_updates, jnp.int32))
    meta = {'stage': stage.name, 'num_sample_steps': stage.num_sample_steps,
            'num_updates': stage.num_updates, 'loss': 0.5,
            'data_shape': list(data_shape), 'num_classes': num_classes}
    manager = checkpointing.StageCheckpoints(
        checkpointing.stage_dir(workdir, stage.name))
    manager.save(state, meta)
    manager.close()
  return workdir


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('cache'))


@pytest.fixture(scope='module')
def digits_workdir(tmp_path_factory):
  return make_finished_workdir(tmp_path_factory.mktemp('digits'),
                               tiny_config(), (8, 8, 1), 1)


@pytest.fixture(scope='module')
def digits_results(digits_workdir, cache_dir):
  return evaluate.run_evaluation(digits_workdir, cache_dir=cache_dir,
                                 print_table=False)


EXPECTED_ROWS = [('distilled', 'ddim', 2), ('distilled', 'ddim', 1),
                 ('teacher', 'ddim', 1), ('teacher', 'ddim', 2),
                 ('teacher', 'ddim', 4), ('teacher', 'ancestral', 1),
                 ('teacher', 'ancestral', 2), ('teacher', 'ancestral', 4)]


def test_digits_rows(digits_results):
  rows = digits_results['rows']
  assert [(r['model'], r['sampler'], r['steps']) for r in rows] == EXPECTED_ROWS
  for row in rows:
    assert math.isfinite(row['digits_fd']) and row['digits_fd'] >= 0
    assert 1 <= row['digits_is'] <= 10
    assert row['seconds'] >= row['sample_seconds'] >= 0
  # Each row samples its own model: students differ from the teacher at the
  # same step count, and the two samplers differ.
  by_key = {(r['model'], r['sampler'], r['steps']): r['digits_fd']
            for r in rows}
  assert by_key[('distilled', 'ddim', 2)] != by_key[('teacher', 'ddim', 2)]
  assert by_key[('teacher', 'ddim', 4)] != by_key[('teacher', 'ancestral', 4)]
  assert digits_results['metric_names'] == ['digits_fd', 'digits_is']
  assert digits_results['num_samples'] == NUM_SAMPLES
  assert digits_results['teacher_steps'] == [1, 2, 4]  # teacher_max_steps
  assert digits_results['complete']


def test_digits_files(digits_workdir, digits_results):
  out = Path(digits_workdir) / 'eval'
  assert json.loads((out / 'results.json').read_text()) == json.loads(
      json.dumps(digits_results))
  png = (out / 'quality_vs_steps.png').read_bytes()
  assert png.startswith(b'\x89PNG') and len(png) > 5000
  md = (out / 'results.md').read_text()
  assert md == evaluate.format_markdown(digits_results)
  tables = [block for block in md.split('\n\n') if block.startswith('|')]
  assert len(tables) == 2  # digits_fd, then digits_is
  assert '### digits_fd (lower is better)' in md
  assert '### digits_is (higher is better)' in md
  for table, name in zip(tables, ('digits_fd', 'digits_is')):
    lines = table.splitlines()
    assert lines[0] == ('| steps | distilled | teacher DDIM | '
                        'teacher ancestral |')
    assert lines[1] == '|---:|---:|---:|---:|'
    cells = [line.strip('|').split('|') for line in lines[2:]]
    assert [int(c[0]) for c in cells] == [1, 2, 4]
    # Step 4 has no student (the teacher's own step count).
    assert cells[2][1].strip() == ''
    rows = {(r['model'], r['sampler'], r['steps']): r[name]
            for r in digits_results['rows']}
    assert float(cells[0][1]) == pytest.approx(
        rows[('distilled', 'ddim', 1)], rel=1e-2, abs=1e-3)
    assert float(cells[2][3]) == pytest.approx(
        rows[('teacher', 'ancestral', 4)], rel=1e-2, abs=1e-3)


def test_one_compiled_sampler_per_sampler(digits_workdir, digits_results):
  del digits_results  # ran every row
  loaded = workdir_models.open_workdir(digits_workdir)
  for sampler in ('ddim', 'ancestral'):
    # Students and teacher share the DDIM program across all step counts.
    fn = sample_lib._sampler_fn(loaded.model, sampler, loaded.mesh)  # pylint: disable=protected-access
    assert fn._cache_size() == 1  # pylint: disable=protected-access


def test_overrides_and_cached_classifier(digits_workdir, cache_dir,
                                         monkeypatch):
  from diffusion_distillation.metrics import digits_classifier

  def fail(*args, **kwargs):
    raise AssertionError('the cached classifier was not reused')

  monkeypatch.setattr(digits_classifier, 'train_digits_classifier', fail)
  results = evaluate.run_evaluation(
      digits_workdir, samplers='ancestral', teacher_steps=[2], seed=3,
      cache_dir=cache_dir, print_table=False)
  assert [(r['model'], r['sampler'], r['steps']) for r in results['rows']] == [
      ('distilled', 'ddim', 2), ('distilled', 'ddim', 1),
      ('teacher', 'ancestral', 2)]
  assert results['seed'] == 3
  md = evaluate.format_markdown(results)
  assert '| steps | distilled | teacher ancestral |' in md


def test_bad_requests(digits_workdir, cache_dir, tmp_path):
  run = lambda **kw: evaluate.run_evaluation(digits_workdir,
                                             cache_dir=cache_dir, **kw)
  with pytest.raises(evaluate.EvalError, match='unknown sampler'):
    run(samplers=['ddim', 'euler'])
  with pytest.raises(evaluate.EvalError, match='teacher_steps'):
    run(teacher_steps='1,0')
  with pytest.raises(evaluate.EvalError, match='num_samples'):
    run(num_samples=1)
  with pytest.raises(evaluate.EvalError, match='metric'):
    run(metric='fid')
  with pytest.raises(workdir_models.WorkdirError, match='config.json'):
    evaluate.run_evaluation(tmp_path / 'nothing', cache_dir=cache_dir)
  # The weights are checked before anything is sampled.
  with pytest.raises(evaluate.EvalError,
                     match='inception_path.*empty.*inception-2015-12-05'):
    run(metric='inception', inception_path='')
  with pytest.raises(evaluate.EvalError, match='not found.*tar xzf'):
    run(metric='inception', inception_path=str(tmp_path / 'missing.pb'))


def test_no_finished_stage(tmp_path, cache_dir):
  train.record_config(tiny_config(), tmp_path)
  with pytest.raises(workdir_models.WorkdirError, match='no finished stage'):
    evaluate.run_evaluation(tmp_path, cache_dir=cache_dir)


def test_markdown_and_plot_helpers():
  rows = [dict(model='distilled', sampler='ddim', steps=1, fid=12.5, **{
      'is': 7.0}), dict(model='teacher', sampler='ddim', steps=1, fid=None,
                        **{'is': None}),
          dict(model='teacher', sampler='ddim', steps=256, fid=3.2, **{
              'is': 9.1})]
  results = dict(workdir='w', dataset='cifar10', metric_names=['fid', 'is'],
                 num_samples=50000, seed=0, rows=rows, complete=False)
  md = evaluate.format_markdown(results)
  assert '| 1 | 12.50 | - |' in md and '| 256 |  | 3.200 |' in md
  assert 'INCOMPLETE' in md
  assert evaluate.plot_png(results).startswith(b'\x89PNG')
  assert evaluate.powers_of_two(128) == (1, 2, 4, 8, 16, 32, 64, 128)
  assert evaluate.powers_of_two(6) == (1, 2, 4)
  assert evaluate.parse_int_list('4,1,2,2', 'x') == (1, 2, 4)
  assert evaluate.parse_int_list('none', 'x') == ()


# --- Command line -------------------------------------------------------------


def _cli(*args, env=None):
  return subprocess.run(
      [sys.executable, '-m', 'diffusion_distillation.evaluate', *args],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu', **(env or {})}, check=False)


@pytest.mark.parametrize('args, message', [
    ([], '--workdir is required'),
    (['--workdir=W', '--samplers=ddim,euler'], "unknown sampler 'euler'"),
    (['--workdir=W', '--teacher_steps=1,two'], "'two' is not an integer"),
    (['--workdir=W', '--num_samples=0'], 'num_samples must be >= 2'),
    (['--workdir=/nonexistent/run'], 'not a training workdir'),
])
def test_cli_bad_input(args, message):
  proc = _cli(*args)
  assert proc.returncode != 0
  assert 'Traceback' not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and message in last


def test_cli_inception_without_weights(digits_workdir):
  proc = _cli(f'--workdir={digits_workdir}', '--metric=inception')
  assert proc.returncode != 0 and 'Traceback' not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and 'inception-2015-12-05.tgz' in last


# --- FID on a CIFAR-10-shaped workdir (mock data, synthetic weights) ----------


def synthetic_inception_npz(path, divisor, seed=0):
  """Random weights with the graph's tensor names, activations kept O(1)."""
  from diffusion_distillation.metrics import inception
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
  tfds = pytest.importorskip('tensorflow_datasets')
  from diffusion_distillation import datasets
  datasets._import_tf()  # pylint: disable=protected-access
  workdir = make_finished_workdir(tmp_path / 'cifar', tiny_config('cifar10'),
                                  (32, 32, 3), 10)
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
  assert [(r['model'], r['steps']) for r in results['rows']] == [
      ('distilled', 2), ('distilled', 1), ('teacher', 1)]
  for row in results['rows']:
    assert math.isfinite(row['fid']) and row['fid'] > 0
    assert 1 <= row['is'] <= 6  # at most the number of samples
  info = results['metric_info']
  assert info['reference_num_examples'] == 10
  stats = list(Path(cache, 'fid_stats').iterdir())
  assert [p.name.rsplit('_', 1)[0] for p in stats] == ['cifar10_train_all']
  assert '| steps | distilled | teacher DDIM |' in (
      workdir / 'eval' / 'results.md').read_text()

  # A second run reads the cached reference statistics (no data set needed).
  monkeypatch.setattr(datasets, 'get_dataset', lambda *a, **k: 1 / 0)
  again = evaluate.run_evaluation(workdir, **{**kwargs, 'teacher_steps': 'none'})
  assert [r['fid'] for r in again['rows']] == pytest.approx(
      [r['fid'] for r in results['rows'][:2]], rel=1e-5)
