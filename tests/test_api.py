"""The Python API: `dd.load(...)` then `model.sample(...)`, as a user calls it.

Sources: the suite's finished tiny workdir (students for 4, 2 and 1 steps),
files in the official release layout written here from it (a file, and a
directory of `checkpoint_<step>` files), and a class-conditional model at
ImageNet's 64x64x3 with 1000 classes whose config comes by name or file.
Every wrong combination raises `dd.ModelError` saying what is available.
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import time

import jax
import numpy as np
import pytest

import diffusion_distillation as dd
from diffusion_distillation.errors import UserError
from diffusion_distillation import config as config_lib
from diffusion_distillation.api import configs
from diffusion_distillation.models import diffusion_model as model_lib
from diffusion_distillation.models import generation
from diffusion_distillation.evaluation import evaluate
from diffusion_distillation.pipeline import loop
from diffusion_distillation.pipeline import official_checkpoints
from diffusion_distillation.pipeline import workdirs

from helpers import PYTHON
from helpers import random_params
from helpers import REPO
from helpers import run_module
from helpers import subprocess_env
from helpers import tiny_config
from helpers import write_config_file

pytestmark = [pytest.mark.heavy,  # processes, training: not the fast tier
              pytest.mark.filterwarnings('ignore:the load_module')]



@pytest.fixture(scope='module')
def workdir(finished_workdir):
  return str(finished_workdir[0])


@pytest.fixture(scope='module')
def student(workdir):
  return dd.load(workdir, num_steps=2)


@pytest.fixture(scope='module')
def released(workdir, tmp_path_factory):
  """The 2-step student as a released file, and the config file it pairs with."""
  directory = tmp_path_factory.mktemp('released')
  params = workdirs.open_workdir(workdir).student_params(2)
  file = official_checkpoints.write_official_checkpoint(
      directory / 'digits_2', params, 2)
  return file, write_config_file(directory, f'{workdir}/config.json')


def imagenet_like_config():
  """configs/imagenet64_base.py (by name) with a tiny network."""
  config = configs.resolve_config('imagenet64')
  config.model.args.update(ch=32, emb_ch=32, ch_mult=(1,), num_res_blocks=1,
                           attn_resolutions=(), num_heads=1, head_dim=None)
  return config


@pytest.fixture(scope='module')
def conditional(tmp_path_factory):
  """A released-layout file of a 1000-class 64x64 model, random parameters."""
  config = imagenet_like_config()
  model = model_lib.DiffusionModel.from_config(config, (64, 64, 3), 1000)
  params = random_params(model, seed=1)  # labels matter (init's do not)
  directory = tmp_path_factory.mktemp('conditional')
  file = official_checkpoints.write_official_checkpoint(
      directory / 'imagenet_2', params, 2)
  return file, config


def test_importing_the_package_imports_no_jax():
  code = ('import sys, diffusion_distillation as dd; '
          'assert "jax" not in sys.modules; dd.load; '
          'assert "jax" in sys.modules; print(sorted(dd.__all__))')
  done = subprocess.run([PYTHON, '-c', code], env=subprocess_env(),
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  assert 'load' in done.stdout and 'ModelError' in done.stdout


def test_a_workdir_student_samples_as_the_pipeline_does(workdir, student):
  images = student.sample(5, seed=3)
  assert images.shape == (5, 8, 8, 1) and images.dtype == np.uint8
  np.testing.assert_array_equal(student.sample(5, seed=3), images)
  assert (student.sample(5, seed=4) != images).any()
  loaded = workdirs.open_workdir(workdir)
  direct, _ = generation.generate(loaded.model, loaded.student_params(2),
                                  mesh=loaded.mesh, num_samples=5,
                                  num_steps=2, seed=3)
  np.testing.assert_array_equal(images, direct)
  assert (student.kind, student.num_steps, student.num_classes,
          student.image_shape) == ('distilled', 2, 1, (8, 8, 1))
  assert student.config.model.mean_type == loaded.config.model.mean_type
  assert '2-step distilled student' in repr(student)
  assert dd.student_steps(workdir) == [1, 2, 4]


def test_a_teacher_samples_with_any_step_count(workdir):
  teacher = dd.load(workdir, model='teacher', num_steps=16)
  assert (teacher.kind, teacher.num_steps) == ('teacher', 16)
  three = teacher.sample(4, seed=1, num_steps=3)
  assert three.shape == (4, 8, 8, 1)
  assert (three != teacher.sample(4, seed=1)).any()  # 16 steps
  assert teacher.sample(4, seed=1, num_steps=3, sampler='ancestral').shape == (
      4, 8, 8, 1)
  assert dd.load(workdir, model='teacher').num_steps == 8  # the config's


@pytest.mark.parametrize('sampler', ['unipc', 'heun:karras'])
def test_a_teacher_samples_with_a_solver_on_any_grid(workdir, sampler):
  teacher = dd.load(workdir, model='teacher')
  images = teacher.sample(4, seed=1, num_steps=3, sampler=sampler)
  assert images.shape == (4, 8, 8, 1)
  assert (images != teacher.sample(4, seed=1, num_steps=3)).any()  # DDIM


def test_a_released_file_or_directory_with_its_config(released, student,
                                                      tmp_path):
  file, config_file = released
  expected = student.sample(6, seed=0)
  for config in (str(config_file), student.config):
    model = dd.load(file, config=config)  # steps recorded in the file
    assert (model.kind, model.num_steps) == ('distilled', 2)
    np.testing.assert_array_equal(model.sample(6, seed=0), expected)
  # A directory of checkpoint_<step> files: the latest one.
  directory = tmp_path / 'run'
  directory.mkdir()
  zeros = jax.tree.map(np.zeros_like, student.params)
  official_checkpoints.write_official_checkpoint(directory, zeros, 2, step=1)
  official_checkpoints.write_official_checkpoint(
      directory, jax.device_get(student.params), 2, step=20)
  from_dir = dd.load(str(directory), config=str(config_file))
  np.testing.assert_array_equal(from_dir.sample(6, seed=0), expected)
  as_teacher = dd.load(file, config=str(config_file), model='teacher')
  assert as_teacher.sample(2, seed=0, num_steps=5).shape == (2, 8, 8, 1)


def test_a_released_imagenet_model_takes_shape_and_classes_from_config(
    conditional):
  file, config = conditional
  model = dd.load(file, config=config)
  assert model.image_shape == (64, 64, 3) and model.num_classes == 1000
  trucks = model.sample(4, seed=0, labels=[867] * 4)
  assert trucks.shape == (4, 64, 64, 3) and trucks.dtype == np.uint8
  np.testing.assert_array_equal(model.sample(4, seed=0, labels=[867] * 4),
                                trucks)
  assert (model.sample(4, seed=0, labels=[2] * 4) != trucks).any()
  assert {'imagenet64', 'imagenet64_base', 'cifar10', 'digits'} <= set(
      dd.config_names())


_SMALL_CIFAR = """
from diffusion_distillation.api import configs

def get_config():
  config = configs.resolve_config('cifar10_distill')  # a TFDS data set
  config.model.args.update(ch=32, emb_ch=32, ch_mult=(1,), num_res_blocks=1,
                           attn_resolutions=(), num_heads=1, head_dim=None)
  return config
"""
_NO_TENSORFLOW = "raise ImportError('TensorFlow is not installed (test)')\n"
_LOAD = """
import sys, diffusion_distillation as dd
model = dd.load(sys.argv[1], config=sys.argv[2])
print(model.sample(2, seed=0).shape, model.image_shape)
"""


def test_a_released_checkpoint_samples_without_tensorflow(tmp_path):
  """`dd.load(file, config=...)` and `sample --checkpoint` take a TFDS data
  set's shapes from the config: no TensorFlow, no data."""
  (tmp_path / 'small_cifar.py').write_text(_SMALL_CIFAR)
  for module in ('tensorflow', 'tensorflow_datasets'):
    (tmp_path / 'blocked' / module).mkdir(parents=True)
    (tmp_path / 'blocked' / module / '__init__.py').write_text(_NO_TENSORFLOW)
  config = configs.resolve_config(str(tmp_path / 'small_cifar.py'))
  model = model_lib.DiffusionModel.from_config(config, (32, 32, 3), 1)
  file = official_checkpoints.write_official_checkpoint(
      tmp_path / 'cifar_4', random_params(model, seed=0), 4)
  env = dict(subprocess_env(), PYTHONPATH=str(tmp_path / 'blocked'))
  run = lambda *args: subprocess.run(args, env=env, capture_output=True,
                                     text=True, timeout=300, check=False)
  done = run(PYTHON, '-c', _LOAD, file, str(tmp_path / 'small_cifar.py'))
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.split('\n')[-2] == '(2, 32, 32, 3) (32, 32, 3)'
  done = run(PYTHON, '-m', 'diffusion_distillation.sample',
             f'--checkpoint={file}', f'--config={tmp_path / "small_cifar.py"}',
             '--num_samples=2', f'--output={tmp_path / "s.npz"}')
  assert done.returncode == 0, done.stderr[-2000:]
  assert np.load(tmp_path / 's.npz')['images'].shape == (2, 32, 32, 3)
  assert 'TensorFlow is not installed' not in done.stderr


def _bad_requests(workdir, student, released, conditional, tmp_path):
  """(call, words the message must hold), for every wrong combination."""
  file, config_file = released
  cond_file, cond_config = conditional
  not_a_model = tmp_path / 'notes.txt'
  not_a_model.write_text('hello')
  cond = lambda: dd.load(cond_file, config=cond_config)
  return [
      (lambda: dd.load(workdir, num_steps=3), ['3 steps', '1, 2, 4']),
      (lambda: dd.load(workdir), ['pass num_steps', '1, 2, 4']),
      (lambda: dd.load(workdir, num_steps=2, config='digits'),
       ['own config', 'leave out config']),
      (lambda: dd.load(workdir, num_steps=2, model='student'),
       ["model='student'", 'distilled', 'teacher']),
      (lambda: dd.load(workdir, num_steps=0), ['num_steps must be >= 1']),
      (lambda: dd.load(tmp_path / 'missing'), ['does not exist']),
      (lambda: dd.load(not_a_model), ['neither a training workdir']),
      (lambda: dd.load(''), ["path=''", 'a training workdir']),
      (lambda: dd.load(None), ['path=None', 'a training workdir']),
      (lambda: student.sample(4, labels=[0] * 4), ['unconditional']),
      (lambda: student.sample(4, num_steps=4),
       ['2-step distilled student', "model='teacher'"]),
      (lambda: student.sample(4, sampler='ancestral'), ["sampler='ddim'"]),
      (lambda: student.sample(4, sampler='unipc'),
       ["sampler='ddim'", 'trained for the DDIM steps of its own grid']),
      (lambda: student.sample(4, sampler='ddim:karras'), ["sampler='ddim'"]),
      (lambda: student.sample(4, sampler='unipc:cosine'),
       ['sampler: must be one of', '`logsnr_uniform`']),
      (lambda: student.sample(0), ['>= 1']),
      (lambda: student.sample(10**12), [f'{10**12} samples of shape',
                                        'GiB available; ask for fewer']),
      (lambda: dd.load(file), ['pass the config', 'imagenet64', 'cifar10']),
      (lambda: dd.load(file, config='imagenet64'),
       ["does not match the config's architecture", 'class_emb']),
      (lambda: dd.load(file, config='imagenet'),
       ["config='imagenet'", 'known names', 'imagenet64']),
      (lambda: dd.load(file, config=str(tmp_path / 'missing.py')),
       ['no such config file']),
      (lambda: dd.load(file, config=str(config_file), num_steps=4),
       ['2-step distilled student', 'num_steps=2']),
      (lambda: cond().sample(2, labels=[0, 1000]),
       ['label 1000 is out of range', '1000 classes', '0..999']),
      (lambda: cond().sample(4, labels=[1, 2, 3]), ['3 labels for 4 samples']),
      (lambda: cond().sample(2, labels=['a', 'b']), ['integer class ids']),
      (lambda: dd.load(workdir, num_steps=1).sample(2, sampler='stochastic'),
       ["sampler='stochastic' needs 2 or more steps", "sampler='ddim'"]),
      *[(lambda s=seed: student.sample(2, seed=s),
         [f'seed={seed!r}', 'integer in [-2**63, 2**63 - 1]'])
        for seed in (2**63, -2**63 - 1, 1.5, 3.0, '3', None, True)],
  ]


def test_every_wrong_combination_is_one_error_type(workdir, student, released,
                                                   conditional, tmp_path):
  for call, words in _bad_requests(workdir, student, released, conditional,
                                   tmp_path):
    with pytest.raises(dd.ModelError) as info:
      call()
    message = str(info.value)
    assert '\n' not in message and message[:1].strip(), message
    for word in words:
      assert word in message, (word, message)


def test_every_integer_seed_is_its_own(student):
  """Was: seeds taken mod 2**32 (2**32 drew seed 0's images, -1 those of
  2**32 - 1) and 2**63 an OverflowError."""
  draw = lambda seed: student.sample(2, seed=seed).tobytes()
  seeds = (0, 2**32, -1, 2**32 - 1, 2**63 - 1, -2**63, np.int64(7))
  assert len({draw(s) for s in seeds}) == len(seeds)
  assert draw(np.int64(7)) == draw(7)


@pytest.mark.parametrize('steps,sampler', [(2, 'ddim'), (2, 'stochastic'),
                                           (3, 'ancestral')])
def test_an_image_depends_on_its_seed_and_index_only(workdir, steps, sampler):
  """Was: `batch_size=7` and the default shared only their first 7 images."""
  model = dd.load(workdir, num_steps=steps,
                  model='teacher' if sampler == 'ancestral' else None)
  every = model.sample(20, seed=5, sampler=sampler)
  np.testing.assert_array_equal(
      model.sample(20, seed=5, batch_size=7, sampler=sampler), every)
  np.testing.assert_array_equal(model.sample(3, seed=5, sampler=sampler),
                                every[:3])
  assert len({image.tobytes() for image in every}) == 20


def test_labels_do_not_change_the_noise_of_other_images(conditional):
  model = dd.load(conditional[0], config=conditional[1])
  both = model.sample(2, seed=0, labels=[867, 2], batch_size=1)
  np.testing.assert_array_equal(both[1:],
                                model.sample(2, seed=0, labels=[5, 2])[1:])


_TWO_DEVICES = """
import sys, numpy as np, diffusion_distillation as dd, jax
assert jax.device_count() == 2
np.save(sys.argv[2], dd.load(sys.argv[1], num_steps=2).sample(
    5, seed=3, batch_size=3, sampler='stochastic'))
"""


def test_the_same_images_on_two_devices(workdir, student, tmp_path):
  """Was: 5 images in batches of 3 padded to 4 (2 devices) drew other
  noise than on 1 device."""
  out = tmp_path / 'two.npy'
  done = subprocess.run([PYTHON, '-c', _TWO_DEVICES, workdir, str(out)],
                        env=subprocess_env(num_devices=2), capture_output=True,
                        text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  np.testing.assert_array_equal(
      np.load(out), student.sample(5, seed=3, sampler='stochastic'))


def test_a_gs_path_without_the_gcs_extra(monkeypatch):
  """Was: ImportError('Please install gcsfs ...') from etils."""
  from diffusion_distillation import paths  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(paths, '_installed', lambda module: False)
  monkeypatch.chdir(REPO)  # the checkout this package is installed from
  with pytest.raises(dd.ModelError, match=r"^gs://b/m: gs:// paths need the "
                     r"gcs extra: pip install -e '\.\[gcs\]'$"):
    dd.load('gs://b/m', config='cifar10')


class _Unreachable:
  """epath.Path for a store that never answers, or fails to connect."""
  def __init__(self, path):
    self.path = str(path)

  def __str__(self):
    return self.path

  def exists(self):
    if self.path.endswith('/hangs'):
      time.sleep(60)
    raise ConnectionError('Cannot connect to host storage.googleapis.com:443')


@pytest.mark.parametrize('name, words', [
    ('hangs', 'no answer from storage.googleapis.com within 0.5 s'),
    ('fails', 'cannot reach storage.googleapis.com (ConnectionError: Cannot '
     'connect to host storage.googleapis.com:443)'),
])
def test_an_unreachable_store_is_one_line_in_bounded_time(monkeypatch, name,
                                                         words):
  """Was: 51 s of retries and a traceback per retry, then a raw
  ClientConnectorDNSError."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  from diffusion_distillation import paths  # pylint: disable=g-import-not-at-top
  from diffusion_distillation.pipeline import workdir_lock  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(paths, '_installed', lambda module: True)
  monkeypatch.setattr(epath, 'Path', _Unreachable)
  monkeypatch.setattr(paths, 'REACH_TIMEOUT_S', 0.5)
  started = time.time()
  from diffusion_distillation.api import loading  # pylint: disable=g-import-not-at-top
  for load in (dd.load, loading.from_checkpoint):  # sample --checkpoint
    with pytest.raises(dd.ModelError,
                       match=f'^gs://b/{name}: {re.escape(words)}'):
      load(f'gs://b/{name}', config='cifar10')
  with pytest.raises(UserError, match=f'^--workdir=gs://b/{name}: '):
    workdir_lock.check_directory(f'gs://b/{name}', f'--workdir=gs://b/{name}')
  assert time.time() - started < 5


def test_the_extra_to_install_is_said_as_this_installation_takes_it(
    monkeypatch, tmp_path):
  from diffusion_distillation import paths  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(tmp_path)  # elsewhere: the checkout's absolute path
  assert paths.install_command('tfds') == f"pip install -e '{REPO}[tfds]'"
  wheel = tmp_path / 'site-packages' / 'diffusion_distillation'
  wheel.mkdir(parents=True)  # no setup.cfg above an installed wheel
  monkeypatch.setattr(paths, '__file__', str(wheel / 'paths.py'))
  assert paths.install_command('tfds') == (
      "pip install 'diffusion_distillation[tfds]'")


def test_an_unrecorded_step_count_must_be_given(student, tmp_path):
  file = official_checkpoints.write_official_checkpoint(
      tmp_path / 'old', jax.device_get(student.params), None)
  with pytest.raises(dd.ModelError, match='does not record the step count'):
    dd.load(file, config=student.config)
  model = dd.load(file, config=student.config, num_steps=2)
  np.testing.assert_array_equal(model.sample(3, seed=0),
                                student.sample(3, seed=0))



def _python_block(path: str, section: str) -> list[str]:
  """The lines of the first Python block after `section` in `path`."""
  with open(os.path.join(REPO, path)) as f:
    text = f.read()
  block = text.split(section, 1)[1].split('```python\n', 1)[1]
  return block.split('```', 1)[0].splitlines()


def test_the_readme_example_runs(workdir):
  """The Python API page's block (the README's three lines are its start),
  on the suite's workdir (but gs://)."""
  page = _python_block(os.path.join('docs', 'api.md'), '# Python API')
  readme = _python_block('README.md', '## Python API')
  assert len(readme) == 3 and page[:3] == readme, readme
  lines = [line for line in page
           if 'released' not in line and 'trucks' not in line]
  assert len(lines) == 5, lines
  scope = {}
  exec('\n'.join(lines).replace('"workdirs/digits"', repr(workdir)), scope)  # pylint: disable=exec-used
  assert scope['images'].shape == (16, 8, 8, 1)
  assert scope['more'].shape == (16, 8, 8, 1)
  assert scope['teacher'].num_steps == 128


def test_relative_paths(workdir, released, monkeypatch):
  monkeypatch.chdir(os.path.dirname(workdir))
  model = dd.load(os.path.basename(workdir), num_steps=1)
  assert model.sample(2, seed=0).shape == (2, 8, 8, 1)
  file, config_file = released
  monkeypatch.chdir(os.path.dirname(file))
  assert dd.load(os.path.basename(file),
                 config=os.path.basename(config_file)).num_steps == 2


def _without(tree: dict, fields) -> dict:
  for field in fields:
    *parents, leaf = field.split('.')
    node = tree
    for part in parents:
      node = node[part]
    del node[leaf]
  return tree


def test_a_workdir_made_before_the_schema_samples_evaluates_and_reruns(
    workdir, student, tmp_path):
  """Its config.json lacks the fields declared since (those the v16 file in
  tests/data lacks); they take their defaults everywhere."""
  old = tmp_path / 'old'
  shutil.copytree(workdir, old)
  v16 = config_lib.flat_fields(json.loads(
      (pathlib.Path(__file__).parent / 'data' / 'digits_config_v16.json').read_text()))
  saved = json.loads((old / 'config.json').read_text())
  added = set(config_lib.flat_fields(saved)) - set(v16)
  assert 'model.cond_drop_prob' in added and 'eval.student_samplers' in added
  (old / 'config.json').write_text(json.dumps(_without(saved, added)))

  images = dd.load(str(old), num_steps=2).sample(4, seed=3)
  np.testing.assert_array_equal(images, student.sample(4, seed=3))
  proc = run_module('sample', f'--workdir={old}', '--num_steps=2',
                    '--num_samples=4', f'--output={tmp_path}/s.npz')
  assert proc.returncode == 0, proc.stderr
  results = evaluate.run_evaluation(old, metric='bpd', num_samples=4,
                                    teacher_steps='2', print_table=False)
  assert results['num_steps'] == 2 and results['bpd'] > 0
  summary = loop.run(tiny_config(), str(old))  # finished: nothing trains
  assert [m['stage'] for m in summary] == ['base', 'distill_4', 'distill_2',
                                           'distill_1']
