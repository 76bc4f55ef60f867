"""`export` and `sample --checkpoint`, run as a user types them.

A model exported from the suite's finished tiny workdir (natively, or in the
official layout) samples exactly the images the workdir gives for the same
seed; the native file needs no config. Bad requests end in one line and
leave nothing behind.
"""

import os
import subprocess

from etils import epath
from flax import serialization
import numpy as np
import pytest

import diffusion_distillation as dd
from diffusion_distillation.models import diffusion_model as model_lib
from diffusion_distillation.pipeline import official_checkpoints

from helpers import assert_rejected
from helpers import PYTHON
from helpers import random_params
from helpers import snapshot
from helpers import subprocess_env
from helpers import tiny_config
from helpers import write_config_file

pytestmark = [pytest.mark.heavy,  # processes, training: not the fast tier
              pytest.mark.filterwarnings('ignore:the load_module')]


def run(cwd, module, *args):
  return subprocess.run([PYTHON, '-m', f'diffusion_distillation.{module}',
                         *args], cwd=cwd, env=subprocess_env(),
                        capture_output=True, text=True, timeout=300)


def ok(result):
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def images_of(path):
  with np.load(path) as f:
    return f['images']


@pytest.fixture(scope='module')
def workdir(finished_workdir):
  return str(finished_workdir[0])


@pytest.fixture(scope='module')
def exported(workdir, tmp_path_factory):
  """Both formats of the 2-step student, and its samples from the workdir."""
  cwd = tmp_path_factory.mktemp('export')
  rel = os.path.relpath(workdir, cwd)
  common = [f'--workdir={rel}', '--num_steps=2']
  native = ok(run(cwd, 'export', *common, '--output=out/student.dd'))
  ok(run(cwd, 'export', *common, '--output=student_official',
         '--format=official'))
  ok(run(cwd, 'sample', *common, '--num_samples=6', '--seed=5',
         '--output=from_workdir.npz'))
  write_config_file(cwd, f'{workdir}/config.json')
  return cwd, native.stdout


def test_an_exported_file_describes_itself(exported, workdir):
  cwd, stdout = exported
  assert 'wrote ' in stdout and '2-step distilled student' in stdout
  assert sorted(os.listdir(cwd / 'out')) == ['student.dd']  # no temp file
  state = serialization.msgpack_restore((cwd / 'out/student.dd').read_bytes())
  about = state['diffusion_distillation']
  assert (about['model'], about['data_shape'], about['num_classes'],
          int(state['num_sample_steps'])) == ('distilled', [8, 8, 1], 1, 2)
  assert 'optimizer' not in state  # parameters once
  official = serialization.msgpack_restore(
      (cwd / 'student_official').read_bytes())
  assert 'diffusion_distillation' not in official
  assert set(official) == {'step', 'optimizer', 'ema_params',
                           'num_sample_steps'}
  model = dd.load(cwd / 'out/student.dd')
  assert (model.kind, model.num_steps) == ('distilled', 2)
  assert model.config.to_dict() == dd.load(workdir, num_steps=2).config.to_dict()


def test_exported_models_sample_the_workdirs_images(exported):
  cwd, _ = exported
  native = ok(run(cwd, 'sample', '--checkpoint=out/student.dd',
                  '--num_samples=6', '--seed=5', '--output=native.npz'))
  # Was: "Reading official checkpoint" for our own file.
  assert 'Read the exported model' in native.stderr
  assert 'official checkpoint' not in native.stderr
  ok(run(cwd, 'sample', '--checkpoint=student_official', '--config=config.py',
         '--num_samples=6', '--seed=5', '--output=official.npz'))
  expected = images_of(cwd / 'from_workdir.npz')
  assert expected.shape == (6, 8, 8, 1)
  for name in ('native.npz', 'official.npz'):
    assert images_of(cwd / name).tobytes() == expected.tobytes(), name
    assert (cwd / name).with_suffix('.png').exists()


def test_an_exported_teacher_keeps_any_step_count(workdir, tmp_path):
  ok(run(tmp_path, 'export', f'--workdir={workdir}', '--model=teacher',
         '--num_steps=16', '--output=teacher.dd'))
  model = dd.load(tmp_path / 'teacher.dd')
  assert (model.kind, model.num_steps) == ('teacher', 16)
  teacher = dd.load(workdir, model='teacher')
  np.testing.assert_array_equal(model.sample(3, seed=2, num_steps=3),
                                teacher.sample(3, seed=2, num_steps=3))
  # A solver on another grid, from the command line.
  ok(run(tmp_path, 'sample', '--checkpoint=teacher.dd', '--num_steps=3',
         '--sampler=dpmpp_3m:karras', '--num_samples=3', '--seed=2',
         '--output=solver.npz'))
  np.testing.assert_array_equal(
      np.load(tmp_path / 'solver.npz')['images'],
      teacher.sample(3, seed=2, num_steps=3, sampler='dpmpp_3m:karras'))


@pytest.mark.parametrize('args,message', [
    (['--num_steps=3', '--output=x.dd'], ['3 steps', '1, 2, 4']),
    (['--output=x.dd'], ['pass --num_steps;', '1, 2, 4']),  # was: num_steps
    (['--num_steps=0', '--output=x.dd'], ['--num_steps', '0']),
    (['--num_steps=2', '--output=existing'], ['is a directory']),
    # Was: silently replaced.
    (['--num_steps=2', '--output=kept.dd'], ['kept.dd exists',
                                     'pass --overwrite']),
    (['--num_steps=2', '--output=x.dd', '--format=onnx'], ['--format']),
])
def test_export_refuses_bad_requests(workdir, tmp_path, args, message):
  (tmp_path / 'existing').mkdir()
  (tmp_path / 'kept.dd').write_text('a file the user keeps')
  before, cwd = snapshot(workdir), snapshot(tmp_path)
  assert_rejected(run(tmp_path, 'export', f'--workdir={workdir}', *args),
                  *message)
  assert snapshot(workdir) == before and snapshot(tmp_path) == cwd


def test_export_replaces_a_file_only_when_asked(exported, tmp_path):
  cwd, _ = exported
  target = tmp_path / 'student.dd'
  target.write_text('old')
  student = dd.load(cwd / 'out/student.dd')
  with pytest.raises(dd.ModelError, match='exists; pass overwrite=True'):
    student.export(target)
  assert target.read_text() == 'old'
  student.export(target, overwrite=True)
  assert dd.load(target).num_steps == 2


def test_a_failed_export_leaves_no_file(exported, tmp_path, monkeypatch):
  """Was: `NAME.tmp` left behind when the write failed."""
  cwd, _ = exported
  student = dd.load(cwd / 'out/student.dd')

  def disk_full(self, data):  # pylint: disable=unused-argument
    with self.open('wb') as f:
      f.write(b'half')
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(type(epath.Path(tmp_path)), 'write_bytes', disk_full)
  with pytest.raises(OSError, match='No space left'):
    student.export(tmp_path / 'student.dd')
  assert not os.listdir(tmp_path)


def test_an_exported_file_is_loaded_as_what_it_holds(exported, workdir,
                                                    tmp_path):
  """Was: `model='teacher'` returned the 2-step student labelled teacher."""
  cwd, _ = exported
  with pytest.raises(dd.ModelError, match=(
      r'holds the 2-step distilled student \(written by export\), not a '
      "teacher model; leave out model, or export the workdir's teacher")):
    dd.load(cwd / 'out/student.dd', model='teacher')
  dd.load(workdir, model='teacher').export(tmp_path / 'teacher.dd')
  with pytest.raises(dd.ModelError, match='holds a teacher'):
    dd.load(tmp_path / 'teacher.dd', model='distilled')
  with pytest.raises(dd.ModelError, match=r'pass num_steps=2 \(or leave it '
                     r'out\)$'):  # no advice to load it as a teacher
    dd.load(cwd / 'out/student.dd', num_steps=4)


def test_export_needs_a_workdir(tmp_path):
  assert_rejected(run(tmp_path, 'export', '--workdir=nowhere',
                      '--num_steps=2', '--output=x.dd'),
                  'nowhere', 'not a training workdir')
  assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_sample_refuses_bad_requests(exported, workdir):
  cwd, _ = exported
  before = snapshot(cwd)
  for args, message in [
      (['--checkpoint=out/student.dd', f'--workdir={workdir}'],
       ['exactly one of --workdir', '--checkpoint']),
      ([], ['exactly one of --workdir']),
      (['--checkpoint=out/student.dd', '--config=digits'],
       ['own config', 'leave out --config']),
      ([f'--workdir={workdir}', '--num_steps=2', '--labels=1,2'],
       ['unconditional']),
      (['--checkpoint=out/student.dd', '--labels=1,x'], ['--labels=1,x',
                                                         'integer']),
      # Was: the API's words (`pass num_steps`, `config=NAME`).
      (['--checkpoint=out/student.dd', '--num_steps=4'],
       ['pass --num_steps=2 (or leave it out)']),
      (['--checkpoint=student_official'], ['(--config=NAME or a config file']),
      (['--checkpoint=out/student.dd', '--seed=9223372036854775808'],
       ['--seed=9223372036854775808: out of range', '[-2**63, 2**63 - 1]']),
      (['--checkpoint=out/student.dd', '--sampler=unipc'],
       ['--sampler=ddim', 'trained for the DDIM steps of its own grid']),
      (['--checkpoint=out/student.dd', '--sampler=unipc:cosine'],
       ['--sampler', '`logsnr_uniform`']),
  ]:
    assert_rejected(run(cwd, 'sample', *args, '--output=bad.npz'), *message)
  assert snapshot(cwd) == before


def test_sample_with_labels_from_a_released_conditional_model(tmp_path):
  config = tiny_config(dataset__args__class_conditional=True)
  model = model_lib.DiffusionModel.from_config(config, (8, 8, 1), 10)
  official_checkpoints.write_official_checkpoint(
      tmp_path / 'conditional_4', random_params(model, seed=0), 4)
  (tmp_path / 'config.json').write_text(config.to_json())
  write_config_file(tmp_path, tmp_path / 'config.json')
  ok(run(tmp_path, 'sample', '--checkpoint=conditional_4',
         '--config=config.py', '--labels=3,3,7,7', '--output=c.npz'))
  with np.load(tmp_path / 'c.npz') as f:
    assert f['images'].shape == (4, 8, 8, 1)
    np.testing.assert_array_equal(f['labels'], [3, 3, 7, 7])
