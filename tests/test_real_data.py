"""Real data as users run it: a TFDS run killed and resumed, a folder of images
from the training command to samples and FID, a TFDS builder by name.

TFDS data sets run on `tfds.testing.mock_data` (tests/multihost_worker.py with
DD_MOCK_TFDS for the command line); the folders are generated PNGs.
"""

import json
import os
import re
import shlex
import signal
import subprocess
import time

import jax
import numpy as np
from PIL import Image
import pytest

from diffusion_distillation import data as data_lib
from diffusion_distillation.evaluation import evaluate
from diffusion_distillation.pipeline import workdirs

from helpers import free_port
from helpers import override_flags
from helpers import PYTHON
from helpers import REPO
from helpers import subprocess_env
from test_evaluate import INCEPTION_DIVISOR
from test_evaluate import synthetic_inception_npz

pytestmark = pytest.mark.slow  # end-to-end runs

WORKER = os.path.join(REPO, 'tests', 'multihost_worker.py')
# One distillation stage (8 -> 4 steps) after the 4-update teacher.
SHORT = ['--config.distillation.end_num_steps=4']
# configs/image_folder.py, tiny (its attention heads: 64 channels).
FOLDER_TINY = [*override_flags(), *SHORT, '--config.model.args.head_dim=32']


def _params(workdir):
  loaded = workdirs.open_workdir(str(workdir))
  return [loaded.teacher_params()] + [loaded.student_params(n)
                                      for n in loaded.student_steps()]


def _assert_identical(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _cifar_cmd(workdir, *extra):
  return [PYTHON, WORKER, f'--config={REPO}/configs/digits.py',
          f'--workdir={workdir}', *override_flags(), *SHORT,
          '--config.dataset.name=cifar10',
          '--config.dataset.args.class_conditional=true',
          '--config.dataset.args.randflip=true', *extra]


def _run_cifar(workdir, processes, kill_at=None):
  """The tiny CIFAR-10 run on 2 devices, as one process or as `processes`
  processes of one device each; with `kill_at`, every process is SIGKILLed
  once that checkpoint exists, and the run is started again to its end."""
  env = dict(subprocess_env(2 // processes), DD_MOCK_TFDS='20',
             JAX_PLATFORMS='cpu')
  for attempt in ('killed', 'done') if kill_at else ('done',):
    address = f'127.0.0.1:{free_port()}'
    cluster = ([] if processes == 1 else
               [f'--coordinator_address={address}',
                f'--num_processes={processes}'])
    procs = [subprocess.Popen(
        _cifar_cmd(workdir, *cluster,
                   *([f'--process_id={i}'] if cluster else [])),
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i in range(processes)]
    try:
      if attempt == 'killed':
        _kill_after(procs, workdir / 'checkpoints' / kill_at)
        continue
      for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    finally:
      for proc in procs:
        proc.kill()
  return err


def _kill_after(procs, marker):
  deadline = time.time() + 480
  while not marker.exists():
    assert all(p.poll() is None for p in procs) and time.time() < deadline
    time.sleep(0.05)
  for proc in procs:
    proc.send_signal(signal.SIGKILL)
  for proc in procs:
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def test_cifar10_killed_after_a_checkpoint_resumes_bit_identical(tmp_path):
  """Two processes SIGKILLed after the base stage's step-2 checkpoint and
  started again end with the parameters of one uninterrupted process, bit
  for bit (the mock split has 20 examples: batches of 8 straddle epochs)."""
  err = _run_cifar(tmp_path / 'reference', 1)
  assert 'read into memory' in err  # dataset.source=auto: memory
  _run_cifar(tmp_path / 'killed', 2, kill_at='base/2')
  _assert_identical(_params(tmp_path / 'reference'),
                    _params(tmp_path / 'killed'))


def _folder(root, sizes=((12, 10),) * 12, classes=('cats', 'dogs')):
  """PNG images in one sub-folder per class, colours by class."""
  rng = np.random.default_rng(0)
  for i, (w, h) in enumerate(sizes):
    label = i % len(classes)
    pixels = rng.integers(0, 80, (h, w, 3)) + 150 * label
    (root / classes[label]).mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(
        root / classes[label] / f'{i:03d}.png')
  return root


def _folder_cmd(module, workdir, *extra):
  return [PYTHON, '-m', f'diffusion_distillation.{module}',
          f'--workdir={workdir}', *extra]


def test_image_folder_trains_distills_samples_and_evaluates(tmp_path):
  folder = _folder(tmp_path / 'images')
  workdir = tmp_path / 'run'
  train = _folder_cmd(
      'main', workdir, '--config=configs/image_folder.py',
      f'--config.dataset.path={folder}', '--config.dataset.image_size=8',
      '--config.dataset.labels_from_subfolders=true',
      '--config.dataset.args.class_conditional=true', *FOLDER_TINY,
      '--config.dataset.eval_fraction=0.25', '--config.eval.num_samples=4')
  env = subprocess_env()
  done = subprocess.run(train, cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert '12 images (9 train, 3 held out), 2 classes' in done.stderr
  index = json.loads((workdir / data_lib.INDEX_FILE).read_text())
  assert len(index['entries']) == 12

  out = tmp_path / 'samples.npz'
  done = subprocess.run(
      _folder_cmd('sample', workdir, '--num_steps=4', '--num_samples=5',
                  f'--output={out}', '--labels=1,1,0,1,0'),
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  with np.load(out) as f:
    assert f['images'].shape == (5, 8, 8, 3) and f['images'].dtype == np.uint8

  # FID against the held-out images, whose statistics are cached in the
  # workdir.
  weights = synthetic_inception_npz(tmp_path / 'inception.npz',
                                    INCEPTION_DIVISOR)
  results = evaluate.run_evaluation(
      str(workdir), num_samples=4, samplers=['ddim'], teacher_steps=[1],
      inception_path=weights, cache_dir=str(tmp_path / 'cache'),
      print_table=False, inception_divisor=INCEPTION_DIVISOR)
  assert [r['steps'] for r in results['rows']] == [4, 1]
  assert all(np.isfinite(r['fid']) for r in results['rows'])
  stats = [p.name for p in (workdir / 'fid_stats').iterdir()]
  assert len(stats) == 1 and stats[0].startswith('image_folder_eval_all_')

  # A changed folder is refused in one line, before anything runs.
  Image.new('RGB', (12, 12)).save(folder / 'cats' / 'new.png')
  done = subprocess.run(train, cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == 2
  assert done.stderr.strip().splitlines()[-1].startswith('error: ')
  assert "1 added, e.g. 'cats/new.png'" in done.stderr
  assert 'Traceback' not in done.stderr


@pytest.mark.parametrize('case, expected', [
    ('empty', 'no image files'),
    ('missing', 'does not exist'),
    ('one', 'at least 2'),
    ('small', 'smaller than'),
    ('corrupt', 'cannot read image'),
])
def test_bad_folders_stop_the_command_in_one_line(tmp_path, case, expected):
  folder = tmp_path / 'images'
  folder.mkdir()
  if case == 'missing':
    folder = tmp_path / 'nowhere'
  elif case == 'one':
    _folder(folder, sizes=[(12, 12)], classes=('a',))
  elif case == 'small':
    _folder(folder, sizes=[(12, 12), (6, 12), (12, 12)], classes=('a',))
  elif case == 'corrupt':
    _folder(folder, sizes=[(12, 12)] * 3, classes=('a',))
    (folder / 'a' / 'broken.png').write_bytes(b'\x89PNG not really')
  done = subprocess.run(
      _folder_cmd('main', tmp_path / 'run', '--config=configs/image_folder.py',
                  f'--config.dataset.path={folder}',
                  '--config.dataset.image_size=8', *FOLDER_TINY),
      cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
      timeout=300)
  assert done.returncode == 2, done.stderr[-2000:]
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and expected in last, last
  assert 'Traceback' not in done.stderr
  assert not (tmp_path / 'run' / 'checkpoints').exists()


def readme_cpu_commands() -> list[list[str]]:
  """The commands for your own images on a CPU (main, evaluate), as the
  Your own data page (docs/your-data.md) prints them."""
  with open(os.path.join(REPO, 'docs', 'your-data.md')) as f:
    readme = f.read()
  block = re.search(r'```sh\n(\.venv/bin/python -m diffusion_distillation\.'
                    r'main --config=configs/image_folder_cpu\.py.*?)```',
                    readme, re.S).group(1)
  return [shlex.split(line) for line in
          block.replace('\\\n', ' ').strip().splitlines()]


def test_the_readme_cpu_commands_for_your_own_images(tmp_path):
  """As printed (relative paths, from a directory that has configs/), with
  the folder's path put in and the run shortened to what CI affords."""
  folder = _folder(tmp_path / 'my_images', sizes=((40, 30),) * 24)
  os.symlink(os.path.join(REPO, 'configs'), tmp_path / 'configs')
  main, evaluate_cmd = readme_cpu_commands()
  assert main[:3] == evaluate_cmd[:1] + ['-m', 'diffusion_distillation.main']
  main = [PYTHON, *(a.replace('/data/my_images', str(folder))
                    for a in main[1:])]
  shorter = ['--config.train.num_train_steps=20',
             '--config.train.log_loss_every_steps=10',
             '--config.distillation.start_num_steps=8',
             '--config.distillation.steps_per_iter=4']
  for command in (main + shorter, [PYTHON, *evaluate_cmd[1:]]):
    done = subprocess.run(command, cwd=tmp_path, env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads((tmp_path / 'workdirs' / 'my_images_cpu' / 'eval' /
                       'bpd.json').read_text())
  assert result['bpd'] > 0 and result['num_examples'] >= 2
