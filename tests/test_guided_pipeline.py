"""A guided run end to end on a tiny config: stages, resume, sampling, CLI.

configs/digits_guided.py with the tiny model: a guided teacher, stage one
(`guided_4`), then progressive distillation 4 -> 1, trained once per module;
sampled and evaluated through the commands a user types.
"""

import json
import os
import shutil
import subprocess

from flax import serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffusion_distillation as dd

from diffusion_distillation.api import loading
from diffusion_distillation.evaluation import evaluate
from diffusion_distillation.pipeline import checkpoints
from diffusion_distillation.pipeline import loop
from diffusion_distillation.pipeline import workdirs

from helpers import load_config
from helpers import PYTHON
from helpers import set_fields
from helpers import snapshot
from helpers import subprocess_env
from helpers import TINY_OVERRIDES
from helpers import write_config_file

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings('ignore:the load_module')]

GUIDED = dict(TINY_OVERRIDES, **{'guidance.num_updates': 4,
                                 'distillation.start_num_steps': 4,
                                 'eval.teacher_steps': (2,),
                                 'eval.samplers': ('ddim',)})  # the config's


def guided_tiny_config():
  return set_fields(load_config('digits_guided'), GUIDED)


@pytest.fixture(scope='module')
def guided_workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('guided')
  summary = loop.run(guided_tiny_config(), str(workdir))
  return workdir, summary


def _params(workdir):
  """Each finished stage's final (EMA) parameters, by stage name."""
  loaded = workdirs.open_workdir(str(workdir))
  out = {'base': loaded.teacher_params()}
  for stage in loaded.stages:
    if stage.trains_student:
      out[stage.name] = loaded.student_params(stage.num_sample_steps)
  return out


def test_stages_chain_teacher_stage_one_and_halvings(guided_workdir):
  workdir, summary = guided_workdir
  assert [m['stage'] for m in summary] == ['base', 'guided_4', 'distill_2',
                                           'distill_1']
  assert [m['sampler_steps'] for m in summary] == [8, 4, 2, 1]
  params = _params(workdir)
  # The teacher never calls its w layers; the students learn them.
  for name in ('guided_4', 'distill_2', 'distill_1'):
    assert np.abs(params[name]['w_dense1']['kernel'] -
                  params['base']['w_dense1']['kernel']).max() > 0, name
  assert os.path.exists(workdir / 'samples' / 'guided_4_4steps.png')


def test_guided_run_resumes_exactly(guided_workdir, tmp_path):
  """Stage one cut short after its checkpoint at step 2: a rerun resumes it
  and ends with exactly the uninterrupted parameters."""
  reference, _ = guided_workdir
  workdir = tmp_path / 'resumed'
  shutil.copytree(reference, workdir)
  shutil.rmtree(workdir / 'checkpoints' / 'guided_4' / '4')
  summary = loop.run(guided_tiny_config(), str(workdir))
  assert [m['stage'] for m in summary] == ['base', 'guided_4', 'distill_2',
                                           'distill_1']
  expected, got = _params(reference), _params(workdir)
  assert sorted(expected) == sorted(got)
  for name in expected:
    for a, b in zip(jax.tree.leaves(expected[name]),
                    jax.tree.leaves(got[name])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _sample(workdir, tmp_path, *flags):
  out = tmp_path / 'out.npz'
  done = subprocess.run(
      [PYTHON, '-m', 'diffusion_distillation.sample', f'--workdir={workdir}',
       f'--output={out}', '--num_samples=3', *flags],
      env=subprocess_env(), capture_output=True, text=True, timeout=300)
  return done, out


def test_a_workdir_of_another_model_is_refused_untouched(guided_workdir,
                                                         tmp_path):
  """Checkpoints whose parameter tree is not the config's model (another
  architecture, an older layout) are not damage: main and sample stop in
  one line and move nothing aside."""
  reference, _ = guided_workdir
  workdir = tmp_path / 'other'
  shutil.copytree(reference, workdir)
  saved = json.loads((workdir / 'config.json').read_text())
  saved['model']['args']['num_res_blocks'] = 2  # what the files do not hold
  (workdir / 'config.json').write_text(json.dumps(saved))
  before = snapshot(workdir)
  config = set_fields(guided_tiny_config(), {'model.args.num_res_blocks': 2})
  with pytest.raises(checkpoints.OtherModelError, match=(
      r"checkpoints/base/\d+ holds another model than the config describes: "
      r"parameter 'down_0.block_1/")):
    loop.run(config, str(workdir))
  done, out = _sample(workdir, tmp_path, '--num_steps=2', '--guidance=1')
  assert done.returncode == 2 and 'another model' in done.stderr
  assert 'Traceback' not in done.stderr and not out.exists()
  assert snapshot(workdir) == before


@pytest.mark.parametrize('flags', [
    ('--num_steps=2', '--guidance=2', '--sampler=stochastic',
     '--labels=1,5,9'),
    ('--num_steps=3', '--model=teacher', '--guidance=7'),
])
def test_sample_at_a_guidance_strength(guided_workdir, tmp_path, flags):
  workdir, _ = guided_workdir
  done, out = _sample(workdir, tmp_path, *flags)
  assert done.returncode == 0, done.stderr[-3000:]
  with np.load(out) as f:
    images, labels = f['images'], f['labels']
  assert images.shape == (3, 8, 8, 1)
  if '--labels=1,5,9' in flags:
    np.testing.assert_array_equal(labels, [1, 5, 9])
    # The same images as the Python API's, seeded.
    model = loading.from_workdir(str(workdir), num_steps=2)
    again = model.sample(3, labels=[1, 5, 9], sampler='stochastic',
                         guidance=2.)
    np.testing.assert_array_equal(images, again)
    # Each image from (seed, index): any batch size, any prefix.
    np.testing.assert_array_equal(
        model.sample(3, labels=[1, 5, 9], sampler='stochastic', guidance=2.,
                     batch_size=2), images)
    np.testing.assert_array_equal(
        model.sample(2, labels=[1, 5], sampler='stochastic', guidance=2.),
        images[:2])
    teacher = loading.from_workdir(str(workdir), num_steps=3, model='teacher')
    np.testing.assert_array_equal(
        teacher.sample(3, labels=[1, 5, 9], guidance=2., batch_size=1),
        teacher.sample(3, labels=[1, 5, 9], guidance=2.))


def test_an_official_layout_guided_student_round_trips(guided_workdir,
                                                        tmp_path):
  """`export --format=official` writes the authors' layout (w_unet3 names,
  `class_emb` row 0 = no class); `sample --checkpoint` and `dd.load` with
  the run's config sample the workdir's images from it."""
  workdir, _ = guided_workdir
  common = ('--num_steps=2', '--guidance=2', '--labels=1,5,9', '--seed=4')
  run = lambda *a: subprocess.run([PYTHON, '-m', *a], cwd=tmp_path,
                                  env=subprocess_env(), capture_output=True,
                                  text=True, timeout=300)
  done = run('diffusion_distillation.export', f'--workdir={workdir}',
             '--num_steps=2', '--format=official', '--output=student.msgpack')
  assert done.returncode == 0, done.stderr[-3000:]
  state = serialization.msgpack_restore(
      (tmp_path / 'student.msgpack').read_bytes())
  params = state['ema_params']
  assert {'dense0', 'dense1', 'w_dense0', 'w_dense1', 'class_emb'} <= set(
      params)
  assert params['class_emb']['kernel'].shape[0] == 11
  assert int(state['num_sample_steps']) == 2
  write_config_file(tmp_path, workdir / 'config.json')
  done = run('diffusion_distillation.sample', '--checkpoint=student.msgpack',
             '--config=config.py', '--output=official.npz', *common)
  assert done.returncode == 0, done.stderr[-3000:]
  expected = loading.from_workdir(str(workdir), num_steps=2).sample(
      3, labels=[1, 5, 9], guidance=2., seed=4)
  with np.load(tmp_path / 'official.npz') as f:
    np.testing.assert_array_equal(f['images'], expected)
  model = dd.load(tmp_path / 'student.msgpack', config=tmp_path / 'config.py')
  np.testing.assert_array_equal(
      model.sample(3, labels=[1, 5, 9], guidance=2., seed=4), expected)


def test_the_guidance_strength_changes_a_students_samples(guided_workdir):
  workdir, _ = guided_workdir
  loaded = workdirs.open_workdir(str(workdir))
  student, params = loaded.model.student(), loaded.student_params(1)
  labels = jnp.arange(4, dtype=jnp.int32)
  # In float: a tiny run's w layers move samples by less than the uint8 step.
  draw = lambda w: np.asarray(student.generate(
      params, jax.random.split(jax.random.PRNGKey(0), 4), labels,
      num_steps=1, guidance=w))
  assert np.abs(draw(0.) - draw(4.)).max() > 1e-3


@pytest.mark.parametrize('flags,message', [
    (('--num_steps=2', '--guidance=4.5'),
     "guidance=4.5 is outside the range this run's students were trained "
     'for, [0, 4]'),
    (('--num_steps=2', '--guidance=1', '--labels=3,10,2'),
     'label 10 is out of range'),
    (('--num_steps=2', '--sampler=ancestral'), "not 'ancestral'"),
])
def test_bad_guided_requests_end_in_one_line(guided_workdir, tmp_path, flags,
                                            message):
  workdir, _ = guided_workdir
  done, out = _sample(workdir, tmp_path, *flags)
  assert done.returncode == 2, done.stderr[-3000:]
  assert message in done.stderr and 'Traceback' not in done.stderr
  assert not out.exists()


def test_guidance_on_an_unguided_model_is_refused(finished_workdir, tmp_path):
  workdir, _ = finished_workdir
  for flags in (('--num_steps=2',), ('--num_steps=2', '--model=teacher')):
    done, out = _sample(workdir, tmp_path, *flags, '--guidance=1')
    assert done.returncode == 2, done.stderr[-3000:]
    assert 'cannot be guided' in done.stderr, done.stderr[-3000:]
    assert 'Traceback' not in done.stderr and not out.exists()


def test_stochastic_sampling_of_an_unguided_student(finished_workdir,
                                                    tmp_path):
  workdir, _ = finished_workdir
  done, out = _sample(workdir, tmp_path, '--num_steps=2',
                      '--sampler=stochastic')
  assert done.returncode == 0, done.stderr[-3000:]
  with np.load(out) as f:
    assert f['images'].shape == (3, 8, 8, 1)


def test_evaluation_has_a_guidance_axis(guided_workdir, tmp_path):
  reference, _ = guided_workdir
  workdir = tmp_path / 'eval'
  shutil.copytree(reference, workdir)
  results = evaluate.run_evaluation(str(workdir), num_samples=10,
                                    print_table=False)
  rows = results['rows']
  assert {r['guidance'] for r in rows} == {0., 1., 2.}
  for w in (0., 1., 2.):
    mine = {(r['model'], r['sampler'], r['steps']) for r in rows
            if r['guidance'] == w}
    assert mine == {('distilled', 'ddim', n) for n in (4, 2, 1)} | {
        ('distilled', 'stochastic', n) for n in (4, 2)} | {
            ('teacher', 'ddim', 2)}
  assert all(0. <= r['class_accuracy'] <= 1. for r in rows)
  # The guided teacher evaluates its network twice per step, a student once.
  assert all(r['nfe'] == (2 if r['model'] == 'teacher' else 1) * r['steps']
             for r in rows)
  table = (workdir / 'eval' / 'results.md').read_text()
  assert ('| w | NFE | distilled | distilled stochastic | teacher DDIM | '
          'best within this NFE |') in table
  assert '### class accuracy' in table
  assert (workdir / 'eval' / 'quality_vs_steps.png').exists()


def test_guided_distillation_in_the_authors_three_runs(tmp_path):
  """As configs/imagenet64_guided_{base,stage_one,nvidia}.py: the guided
  teacher is trained by a config without a guidance section (so without
  the w layers); stage one adds fresh ones; stage two, another run without
  stage one, distils that student with the two-step ("nvidia") target."""
  teacher_config = guided_tiny_config()
  del teacher_config['guidance'], teacher_config['distillation']
  teacher_config.eval.teacher_max_steps = 8
  loop.run(teacher_config, str(tmp_path / 'teacher'))
  config = set_fields(guided_tiny_config(), {
      'train.num_train_steps': 0, 'distillation.start_num_steps': 2,
      'distillation.teacher_checkpoint_path': str(tmp_path / 'teacher'),
      'guidance.num_updates': 2, 'distillation.steps_per_iter': 2})
  summary = loop.run(config, str(tmp_path / 'student'))
  assert [m['stage'] for m in summary] == ['guided_2', 'distill_1']
  teacher = workdirs.open_workdir(str(tmp_path / 'teacher')).teacher_params()
  assert 'w_dense0' not in teacher
  student = workdirs.open_workdir(str(tmp_path / 'student')).student_params(1)
  assert {'w_dense0', 'w_dense1'} <= set(student)
  stage_two = set_fields(config, {
      'guidance.num_updates': 0, 'distillation.target': 'two_step',
      'distillation.teacher_checkpoint_path': str(
          tmp_path / 'student' / 'checkpoints' / 'guided_2')})
  summary = loop.run(stage_two, str(tmp_path / 'stage_two'))
  assert [m['stage'] for m in summary] == ['distill_1']
  # Its teacher is the stage-one student: sampled with w, in any steps.
  teacher = loading.from_workdir(str(tmp_path / 'stage_two'), num_steps=3,
                                 model='teacher')
  stage_one = loading.from_workdir(str(tmp_path / 'student'), num_steps=2)
  assert teacher.guidance_for() == 0.3  # the authors' w_const
  np.testing.assert_array_equal(
      teacher.sample(2, labels=[3, 4], guidance=1., num_steps=2),
      stage_one.sample(2, labels=[3, 4], guidance=1.))
