"""Tests for reading/writing checkpoints in the official release layout.

Uses a tiny Linen model whose module names follow the official UNet
('dense0', 'conv_in', 'down_0.block_0', 'mid.attn_1'), not our unet.py.
"""

import os
from pathlib import Path
import subprocess
import sys

from flax import linen as nn
from flax import serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_distillation.pipeline import official_checkpoints as oc

REPO = Path(__file__).resolve().parents[1]


class _Block(nn.Module):

  @nn.compact
  def __call__(self, x):
    h = nn.Conv(4, (3, 3), name='conv1')(x)
    return x + nn.Dense(4, name='temb_proj')(h)


class _Attn(nn.Module):

  @nn.compact
  def __call__(self, x):
    q = nn.DenseGeneral(features=(2, 2), name='q')(x)  # kernel (4, 2, 2)
    return nn.DenseGeneral(features=4, axis=(-2, -1), name='proj_out')(q)


class _Tiny(nn.Module):

  @nn.compact
  def __call__(self, x):
    e = nn.Dense(4, name='dense0')(jnp.mean(x, axis=(1, 2)))
    h = nn.Conv(4, (3, 3), name='conv_in')(x) + e[:, None, None, :]
    h = _Block(name='down_0.block_0')(h)
    return _Attn(name='mid.attn_1')(h)


_X = jnp.zeros((1, 4, 4, 3), jnp.float32)


@pytest.fixture(scope='module')
def abstract():
  # Built the way real callers do; eval_shape only traces (nothing compiles).
  return jax.eval_shape(_Tiny().init, jax.random.PRNGKey(0), _X)['params']


@pytest.fixture(scope='module')
def params(abstract):
  rng = np.random.default_rng(0)
  return jax.tree.map(
      lambda s: rng.standard_normal(s.shape).astype(np.float32), abstract)


def _official_bytes(ema_params, num_sample_steps=8, step=5):
  """Serialises a state dict the way the official TrainState would be."""
  return serialization.msgpack_serialize({
      'step': step,
      'optimizer': {'target': ema_params,
                    'state': {'step': step, 'param_states': {}}},
      'ema_params': ema_params,
      'num_sample_steps': num_sample_steps,
  })


def _nested_copy(tree):
  return jax.tree.map(np.array, tree)


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip(tmp_path, params, abstract):
  path = oc.write_official_checkpoint(tmp_path / 'cifar_8', params,
                                      num_sample_steps=8, step=123)
  assert oc.is_official_checkpoint(path)

  raw = serialization.msgpack_restore(Path(path).read_bytes())
  assert set(raw) == {'step', 'optimizer', 'ema_params', 'num_sample_steps'}
  assert raw['step'] == 123 and raw['num_sample_steps'] == 8
  assert set(raw['optimizer']) == {'target', 'state'}
  assert raw['optimizer']['state']['step'] == 0

  loaded, num_sample_steps = oc.load_official_checkpoint(path, abstract)
  assert num_sample_steps == 8
  _assert_trees_equal(loaded, params)
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(loaded))


def test_unrecorded_num_sample_steps_is_none(tmp_path, params, abstract):
  path = oc.write_official_checkpoint(tmp_path / 'ckpt', params, None)
  assert oc.load_official_checkpoint(path, abstract)[1] is None


def test_adam_state_layout(tmp_path, params):
  path = oc.write_official_checkpoint(tmp_path / 'ckpt', params, 4,
                                      adam_state=True)
  raw = serialization.msgpack_restore(Path(path).read_bytes())
  states = raw['optimizer']['state']['param_states']
  kernel = states['down_0.block_0']['conv1']['kernel']
  assert set(kernel) == {'grad_ema', 'grad_sq_ema'}
  assert kernel['grad_ema'].shape == params['down_0.block_0']['conv1'][
      'kernel'].shape


def test_reshapes_equal_size_leaves(tmp_path, params, abstract):
  old = _nested_copy(params)
  q = old['mid.attn_1']['q']['kernel']
  assert q.shape == (4, 2, 2)
  old['mid.attn_1']['q']['kernel'] = q.reshape(4, 4)  # old-flax layout
  path = tmp_path / 'old_flax'
  path.write_bytes(_official_bytes(old))

  loaded, _ = oc.load_official_checkpoint(path, abstract)
  assert loaded['mid.attn_1']['q']['kernel'].shape == (4, 2, 2)
  _assert_trees_equal(loaded, params)


def test_wrong_shape_names_first_mismatch(tmp_path, params, abstract):
  bad = _nested_copy(params)
  bad['down_0.block_0']['conv1']['kernel'] = np.zeros((3, 3, 4, 8),
                                                      np.float32)
  bad['mid.attn_1']['proj_out']['kernel'] = np.zeros((2, 2, 5), np.float32)
  path = tmp_path / 'bad'
  path.write_bytes(_official_bytes(bad))
  with pytest.raises(ValueError) as e:
    oc.load_official_checkpoint(path, abstract)
  msg = str(e.value)
  assert "does not match the config's architecture" in msg
  assert "'down_0.block_0/conv1/kernel'" in msg
  assert '(3, 3, 4, 8)' in msg and '(3, 3, 4, 4)' in msg
  assert 'proj_out' not in msg and '1 more' in msg


def test_missing_and_extra_keys(tmp_path, params, abstract):
  missing = _nested_copy(params)
  del missing['conv_in']['bias']
  path = tmp_path / 'missing'
  path.write_bytes(_official_bytes(missing))
  with pytest.raises(ValueError, match=r"'conv_in/bias' is missing.*\(4,\)"):
    oc.load_official_checkpoint(path, abstract)

  extra = _nested_copy(params)
  extra['class_emb'] = {'kernel': np.zeros((10, 4), np.float32)}
  path = tmp_path / 'extra'
  path.write_bytes(_official_bytes(extra))
  with pytest.raises(ValueError,
                     match=r"'class_emb/kernel' \(shape \(10, 4\)\) is in"):
    oc.load_official_checkpoint(path, abstract)


def test_variables_dict_is_accepted(tmp_path, params, abstract):
  path = oc.write_official_checkpoint(tmp_path / 'ckpt', params, 2)
  loaded, _ = oc.load_official_checkpoint(path, {'params': abstract})
  _assert_trees_equal(loaded, {'params': params})


def test_missing_file(tmp_path, abstract):
  missing = tmp_path / 'nope'
  assert not oc.is_official_checkpoint(missing)
  with pytest.raises(FileNotFoundError, match='not found'):
    oc.load_official_checkpoint(missing, abstract)
  empty = tmp_path / 'empty_dir'
  empty.mkdir()
  assert not oc.is_official_checkpoint(empty)
  with pytest.raises(FileNotFoundError, match=r'checkpoint_<step>'):
    oc.load_official_checkpoint(empty, abstract)


def test_not_msgpack(tmp_path, abstract):
  path = tmp_path / 'notes.txt'
  path.write_text('hello')
  assert not oc.is_official_checkpoint(path)
  with pytest.raises(ValueError, match='not a flax msgpack checkpoint'):
    oc.load_official_checkpoint(path, abstract)
  no_ema = tmp_path / 'no_ema'
  no_ema.write_bytes(serialization.msgpack_serialize({'step': 1}))
  with pytest.raises(ValueError, match="no 'ema_params'"):
    oc.load_official_checkpoint(no_ema, abstract)


def test_directory_picks_latest(tmp_path, params, abstract):
  ckpt_dir = tmp_path / 'run'
  ckpt_dir.mkdir()
  for step in (2, 10, 9):  # natural order: 10 is latest, not 9
    scaled = jax.tree.map(lambda x, s=step: x + s, params)
    oc.write_official_checkpoint(ckpt_dir, scaled, 16 // step if step < 16
                                 else 0, step=step)
  (ckpt_dir / 'checkpoint_tmp').write_bytes(b'partial')
  assert sorted(p.name for p in ckpt_dir.iterdir()) == [
      'checkpoint_10', 'checkpoint_2', 'checkpoint_9', 'checkpoint_tmp']
  assert oc.is_official_checkpoint(ckpt_dir)
  loaded, num_sample_steps = oc.load_official_checkpoint(ckpt_dir, abstract)
  assert num_sample_steps == 1
  _assert_trees_equal(loaded, jax.tree.map(lambda x: x + 10, params))


def test_orbax_like_directory_is_not_official(tmp_path):
  # flax/orbax write checkpoint_<step> *directories* with metadata files.
  step_dir = tmp_path / 'ckpts' / 'checkpoint_100'
  step_dir.mkdir(parents=True)
  (step_dir / '_CHECKPOINT_METADATA').write_text('{}')
  (tmp_path / 'ckpts' / '_METADATA').write_text('{}')
  assert not oc.is_official_checkpoint(tmp_path / 'ckpts')
  assert not oc.is_official_checkpoint(step_dir)


def _run_cli(*args):
  """(exit status, stdout, stderr) of the official_checkpoint command."""
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  proc = subprocess.run(
      [sys.executable, '-m', 'diffusion_distillation.official_checkpoint',
       *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
      check=False)
  return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.heavy  # starts a process
def test_cli_info(tmp_path, params):
  oc.write_official_checkpoint(tmp_path, params, 8, step=77)
  code, out, err = _run_cli(f'--input={tmp_path}', '--info')
  assert code == 0, err
  count = sum(x.size for x in jax.tree.leaves(params))
  assert f'checkpoint: {tmp_path / "checkpoint_77"}' in out
  assert 'step: 77' in out
  assert 'num_sample_steps: 8' in out
  assert f'parameters: {count:,} in' in out
  assert ('top-level modules (4): conv_in, dense0, down_0.block_0, '
          'mid.attn_1') in out


@pytest.mark.heavy  # starts a process
def test_cli_errors(tmp_path, params):
  code, out, err = _run_cli(f'--input={tmp_path / "missing"}', '--info')
  assert code == 2 and out == ''
  assert err.startswith('error: Checkpoint not found') and err.count('\n') == 1

  path = oc.write_official_checkpoint(tmp_path / 'c', params, 8)
  code, _, err = _run_cli(f'--input={path}')
  assert code == 2 and err == 'error: nothing to do; pass --info\n'
  code, out, _ = _run_cli(f'--input={path}', '--info')
  assert code == 0 and 'num_sample_steps: 8' in out
