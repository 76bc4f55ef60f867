"""`--workdir=gs://bucket/run`: the pipeline reaches the workdir only through
the layers that speak GCS, never through the local file-system API.

GCS itself cannot be reached from the tests, and one of the two layers the
pipeline writes through cannot be pointed at an emulator (epath's GCS back
ends always talk to storage.googleapis.com). So each layer is redirected at
its own entry point to a local directory standing in for the bucket:

* epath (config.json, sample grids and .npz, TensorBoard event files,
  orbax's directories and JSON metadata): a `gs://` backend for `epath.Path`
  that maps `gs://B/P` to ROOT/B/P;
* TensorStore (orbax's array data): orbax's `gs://` -> kvstore spec function
  returns a `file` kvstore under ROOT instead of a `gcs` one.

orbax still sees `gs://` paths and so takes its GCS code paths (commit-file
finalization instead of directory renames). Meanwhile every local file-system
entry point (open, os.*, shutil.*) raises if it is handed a `gs:` path: a
plain `open('gs://b/x', 'w')` or `os.makedirs('gs://b/x')` would otherwise
quietly create a local directory called `gs:`, which is also checked for.

What this cannot show: the real GCS clients' behaviour (auth, retries,
eventual listing, TF's GCS file system). A static test also checks that the
modules that touch the workdir call no local file API at all.
"""

import ast
import builtins
import io
import json
import os
import pathlib
import shutil
import types

import numpy as np
import pytest

from helpers import REPO
from helpers import tiny_config

pytestmark = pytest.mark.slow  # end-to-end runs

BUCKET = 'fake-bucket'
WORKDIR = f'gs://{BUCKET}/run'


class _BucketBackend:
  """An epath backend for `gs://` paths that keeps objects under `root`."""

  def __init__(self, root, local):
    self.root, self._os = str(root), local
    self.dir_renames = []

  def local(self, path) -> str:
    path = os.fspath(path)
    assert path.startswith('gs://'), path
    return os.path.join(self.root, path[len('gs://'):])

  def remote(self, path) -> str:
    rel = os.path.relpath(path, self.root)
    return 'gs://' + rel

  def open(self, path, mode):
    return self._os.open(self.local(path), mode)

  def exists(self, path):
    return self._os.exists(self.local(path))

  def isdir(self, path):
    return self._os.isdir(self.local(path))

  def listdir(self, path):
    return self._os.listdir(self.local(path))

  def glob(self, path):
    return [self.remote(p) for p in self._os.glob(self.local(path))]

  def walk(self, top, topdown=True, onerror=None):
    for root, dirs, files in self._os.walk(self.local(top), topdown=topdown,
                                           onerror=onerror):
      yield self.remote(root), dirs, files

  def makedirs(self, path, *, exist_ok=False, mode=0o777):
    self._os.makedirs(self.local(path), exist_ok=exist_ok, mode=mode)

  def mkdir(self, path, *, exist_ok=False, mode=0o777):
    self._os.mkdir(self.local(path), exist_ok=exist_ok, mode=mode)

  def rmtree(self, path):
    self._os.rmtree(self.local(path))

  def remove(self, path):
    self._os.remove(self.local(path))

  def _note_rename(self, path, dst):
    if self._os.isdir(self.local(path)):
      # Not atomic on GCS (every object is copied): record for the test.
      self.dir_renames.append((os.fspath(path), os.fspath(dst)))

  def rename(self, path, dst):
    self._note_rename(path, dst)
    self._os.rename(self.local(path), self.local(dst))

  def replace(self, path, dst):
    self._note_rename(path, dst)
    self._os.replace(self.local(path), self.local(dst))

  def copy(self, path, dst, overwrite):
    self._os.copy(self.local(path), self.local(dst), overwrite=overwrite)

  def stat(self, path):
    return self._os.stat(self.local(path))


def _refuse_gs_paths(monkeypatch, guarded):
  """Makes the local file-system API raise on `gs:` paths."""

  def guard(module, name):
    original = getattr(module, name)

    def checked(*args, **kwargs):
      for arg in args[:2]:
        if isinstance(arg, (str, bytes, os.PathLike)):
          text = os.fsdecode(os.fspath(arg))
          if text.startswith('gs:'):
            guarded.append(f'{module.__name__}.{name}({text!r})')
            raise AssertionError(
                f'local file API {module.__name__}.{name} called on {text}')
      return original(*args, **kwargs)

    monkeypatch.setattr(module, name, checked)

  guard(builtins, 'open')
  guard(io, 'open')
  for name in ('open', 'makedirs', 'mkdir', 'listdir', 'scandir', 'stat',
               'lstat', 'remove', 'unlink', 'rename', 'replace', 'rmdir'):
    guard(os, name)
  for name in ('rmtree', 'copy', 'copyfile', 'copytree', 'move'):
    guard(shutil, name)


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """ROOT standing in for GCS (see the module docstring); yields the fake."""
  from etils.epath import backend as backend_lib  # pylint: disable=g-import-not-at-top
  from etils.epath import gpath  # pylint: disable=g-import-not-at-top
  from orbax.checkpoint._src.path import gcs_utils  # pylint: disable=g-import-not-at-top
  root = tmp_path / 'gcs'
  (root / BUCKET).mkdir(parents=True)
  fake = _BucketBackend(root, backend_lib.os_backend)
  fake.kvstores, fake.guarded = [], []
  fake.bucket_lookups = []

  original_backend = gpath._GPath._backend  # pylint: disable=protected-access

  def backend(self):
    if self._uri_scheme == 'gs':  # pylint: disable=protected-access
      return fake
    return original_backend.fget(self)

  monkeypatch.setattr(gpath._GPath, '_backend', property(backend))  # pylint: disable=protected-access

  def kvstore_for_gcs(path):
    fake.kvstores.append(str(path))
    return {'driver': 'file', 'path': fake.local(str(path))}

  monkeypatch.setattr(gcs_utils, 'get_kvstore_for_gcs', kvstore_for_gcs)
  # Asked of a real bucket with google-cloud-storage: is it a hierarchical
  # namespace bucket? Ours is a flat one.
  def get_bucket(name):
    fake.bucket_lookups.append(name)
    return types.SimpleNamespace(hierarchical_namespace_enabled=False)

  monkeypatch.setattr(gcs_utils, 'get_bucket', get_bucket)

  # Anything that still reaches a real GCS client fails at once, offline.
  monkeypatch.setenv('TENSORSTORE_GCS_HTTP_URL', 'http://127.0.0.1:9')
  monkeypatch.setenv('GOOGLE_AUTH_TOKEN_FOR_TESTING', 'offline')

  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  _refuse_gs_paths(monkeypatch, fake.guarded)
  fake.cwd = cwd
  yield fake
  assert not fake.guarded, fake.guarded
  assert sorted(os.listdir(cwd)) == [], 'a relative gs: path was written'


def test_fake_bucket_routes_each_layer_and_refuses_local_api(bucket):
  """The stand-ins work, and the guards catch a plain local call."""
  import collections  # pylint: disable=g-import-not-at-top

  from etils import epath  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  from diffusion_distillation.pipeline import checkpoints  # pylint: disable=g-import-not-at-top
  from diffusion_distillation.pipeline import summaries  # pylint: disable=g-import-not-at-top

  root = pathlib.Path(bucket.root) / BUCKET
  path = epath.Path(f'gs://{BUCKET}/x/config.json')
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text('{}')
  assert (root / 'x' / 'config.json').read_text() == '{}'

  state_cls = collections.namedtuple('State', 'step params')
  state = state_cls(np.int32(3), {'w': np.arange(4, dtype=np.float32)})
  manager = checkpoints.StageCheckpoints(f'gs://{BUCKET}/x/ckpt')
  manager.save(state, {'stage': 'x'})
  restored, meta = manager.restore(
      jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state))
  manager.close()
  np.testing.assert_array_equal(restored.params['w'], state.params['w'])
  assert meta['stage'] == 'x'
  assert (root / 'x' / 'ckpt' / '3' / 'commit_success.txt').exists()
  assert bucket.kvstores and bucket.bucket_lookups == [BUCKET] * len(
      bucket.bucket_lookups)

  writer = summaries.SummaryWriter(f'gs://{BUCKET}/x/tb')
  writer.write_scalars(0, {'loss': 1.0})
  writer.close()
  assert any(n.startswith('events.out.tfevents')
             for n in os.listdir(root / 'x' / 'tb'))

  with pytest.raises(AssertionError, match='local file API'):
    open(f'gs://{BUCKET}/x/plain.txt', 'w')  # pylint: disable=unspecified-encoding
  with pytest.raises(AssertionError, match='local file API'):
    os.makedirs(f'gs://{BUCKET}/x/dir')
  with pytest.raises(AssertionError, match='local file API'):
    os.path.exists(f'gs://{BUCKET}/x/config.json')
  assert len(bucket.guarded) == 3
  bucket.guarded.clear()


def _files(root):
  return sorted(str(p.relative_to(root)) for p in root.rglob('*')
                if p.is_file())


def test_pipeline_resume_and_sampling_on_gs_workdir(bucket):
  from diffusion_distillation.cli import sample as sample_cli  # pylint: disable=g-import-not-at-top
  from diffusion_distillation.pipeline import finished_stages  # pylint: disable=g-import-not-at-top
  from diffusion_distillation.pipeline import loop  # pylint: disable=g-import-not-at-top
  from diffusion_distillation.pipeline import stages  # pylint: disable=g-import-not-at-top
  from diffusion_distillation.pipeline import workdirs  # pylint: disable=g-import-not-at-top

  config = tiny_config()
  planned = stages.plan_stages(config)
  summary = loop.run(config, WORKDIR)
  assert [m['stage'] for m in summary] == [s.name for s in planned]

  run = pathlib.Path(bucket.root) / BUCKET / 'run'
  files = _files(run)
  assert json.loads((run / 'config.json').read_text())['seed'] == config.seed
  for stage in planned:
    assert finished_stages.stage_is_complete(WORKDIR, stage.name,
                                             stage.num_updates)
    final = run / 'checkpoints' / stage.name / str(stage.num_updates)
    # GCS finalization: a commit marker, no renamed temporary directory.
    assert (final / 'commit_success.txt').exists(), files
    assert (final / 'state' / 'manifest.ocdbt').exists()
    assert any(f.startswith(f'tensorboard/{stage.name}/events.out.tfevents')
               for f in files), files
    assert f'samples/{stage.name}_{stages.grid_steps(config, stage)}steps.png' \
        in files
  assert not any('orbax-checkpoint-tmp' in f for f in files)
  assert not [r for r in bucket.dir_renames if '/checkpoints/' in r[0]], (
      bucket.dir_renames)
  # orbax's array data went through TensorStore, at gs:// paths.
  assert any(k.startswith(f'{WORKDIR}/checkpoints/') for k in bucket.kvstores)

  # A rerun finds every stage finished and trains nothing.
  steps = [f for f in files if f.startswith('checkpoints/')]
  again = loop.run(config, WORKDIR)
  assert [m['stage'] for m in again] == [s.name for s in planned]
  assert [f for f in _files(run) if f.startswith('checkpoints/')] == steps

  # Sampling from the gs:// workdir to a gs:// output.
  npz, grid = sample_cli.sample_workdir(WORKDIR, num_steps=1, num_samples=8,
                                        seed=0,
                                        output=f'gs://{BUCKET}/out/samples.npz',
                                        batch_size=8)
  assert str(npz) == f'gs://{BUCKET}/out/samples.npz'
  assert str(grid) == f'gs://{BUCKET}/out/samples.png'
  out = pathlib.Path(bucket.root) / BUCKET / 'out'
  assert sorted(os.listdir(out)) == ['samples.npz', 'samples.png']
  with np.load(out / 'samples.npz') as data:
    assert data['images'].shape == (8, 8, 8, 1)
    assert data['images'].dtype == np.uint8

  loaded = workdirs.open_workdir(WORKDIR)
  assert loaded.student_steps() == sorted(
      s.num_sample_steps for s in planned if s.trains_student)


# --- No local file API on the workdir, statically ---------------------------

# Modules that read or write the workdir (or outputs given as paths) must go
# through epath / orbax only. The exceptions are functions that
# work on the local cache directory (evaluate.py: `--cache_dir`, local by
# design, shared by all workdirs) or on this host's own files.
_WORKDIR_MODULES = (
    'cli/main.py', 'cli/sample.py', 'pipeline/loop.py',
    'pipeline/checkpoints.py', 'pipeline/finished_stages.py',
    'pipeline/workdirs.py', 'pipeline/teachers.py',
    'models/images.py', 'models/generation.py', 'parallel/distributed.py',
    'parallel/sharding.py', 'evaluation/evaluate.py', 'evaluation/report.py',
    'evaluation/scorers.py', 'pipeline/workdir_lock.py',
    'pipeline/summaries.py')
_LOCAL_CACHE_FUNCTIONS = {
    'evaluation/scorers.py': {'_local_weights', '_read_reference_stats'},
    'pipeline/workdir_lock.py': {'_flock'},  # local paths only
    'models/generation.py': {'available_memory'},  # /proc/meminfo
    'parallel/distributed.py': {'_claim_process_id'},  # a local lock file
}
_LOCAL_FILE_CALLS = {
    'open', 'os.open', 'os.makedirs', 'os.mkdir', 'os.listdir', 'os.scandir',
    'os.remove', 'os.unlink', 'os.rename', 'os.replace', 'os.rmdir',
    'os.stat', 'os.walk', 'os.path.exists', 'os.path.isdir',
    'os.path.isfile', 'os.path.getsize', 'shutil.rmtree', 'shutil.copy',
    'shutil.copyfile', 'shutil.copytree', 'shutil.move', 'glob.glob',
    'pathlib.Path', 'io.open', 'np.load', 'np.save', 'np.savez',
    'np.savez_compressed', 'tempfile.mkstemp', 'tempfile.mkdtemp',
    'tf.io.gfile.GFile', 'tf.io.gfile.exists', 'tf.io.gfile.makedirs',
}


def _dotted(node):
  if isinstance(node, ast.Name):
    return node.id
  if isinstance(node, ast.Attribute):
    base = _dotted(node.value)
    return base and f'{base}.{node.attr}'
  return None


def _local_file_calls(source, allowed_functions=()):
  """(line, call) for each call of a local file API in `source`.

  Calls inside the top-level functions named in `allowed_functions` are left
  out.
  """
  found = []
  tree = ast.parse(source)
  for top in tree.body:
    if (isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef)) and
        top.name in allowed_functions):
      continue
    for node in ast.walk(top):
      if isinstance(node, ast.Call):
        name = _dotted(node.func)
        if name in _LOCAL_FILE_CALLS:
          # np.savez(f, ...) into an epath file object is fine.
          if name.startswith('np.save') and node.args and isinstance(
              node.args[0], ast.Name) and node.args[0].id == 'f':
            continue
          found.append((node.lineno, name))
  return sorted(found)


def test_workdir_modules_use_no_local_file_api():
  package = os.path.join(REPO, 'diffusion_distillation')
  offenders = {}
  for name in _WORKDIR_MODULES:
    path = os.path.join(package, name)
    assert os.path.exists(path), f'{name} is gone: update _WORKDIR_MODULES'
    with open(path) as f:
      calls = _local_file_calls(f.read(), _LOCAL_CACHE_FUNCTIONS.get(name, ()))
    if calls:
      offenders[name] = calls
  assert not offenders, (
      f'local file API calls (would break --workdir=gs://): {offenders}')


def test_static_check_catches_local_file_calls():
  source = ('import os\nopen(p)\nos.makedirs(d)\nos.path.exists(p)\n'
            'with f.open("wb") as f:\n  np.savez(f, a=1)\nnp.savez(p, a=1)\n')
  assert _local_file_calls(source) == [
      (2, 'open'), (3, 'os.makedirs'), (4, 'os.path.exists'), (7, 'np.savez')]
  source = 'def cache(d):\n  os.makedirs(d)\ndef save(p):\n  open(p)\n'
  assert _local_file_calls(source, {'cache'}) == [(4, 'open')]
