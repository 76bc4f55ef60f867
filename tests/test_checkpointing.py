"""Stage checkpoints: a failed save says where, and leaves the last one intact."""

import json

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from diffusion_distillation.pipeline import checkpoints

from helpers import damage_arrays


@flax.struct.dataclass
class State:
  step: jnp.ndarray
  params: jnp.ndarray


def test_failed_save_names_the_path_and_keeps_the_previous_checkpoint(
    tmp_path, monkeypatch):
  directory = tmp_path / 'checkpoints' / 'base'
  manager = checkpoints.StageCheckpoints(directory)
  manager.save(State(jnp.int32(1), jnp.ones(3)), {'loss': 0.5})

  def disk_full(*args, **kwargs):
    raise OSError('RESOURCE_EXHAUSTED: No space left on device\n(details)')

  monkeypatch.setattr(ocp.CheckpointManager, 'save', disk_full)
  with pytest.raises(checkpoints.CheckpointError) as error:
    manager.save(State(jnp.int32(2), jnp.zeros(3)), {'loss': 0.4})
  message = str(error.value)
  assert '\n' not in message
  assert str(directory / '2') in message
  assert 'failed: no space left on device;' in message
  assert '(details)' not in message
  assert 'previous checkpoint is intact: free space and rerun' in message
  monkeypatch.undo()

  assert manager.latest_step() == 1
  state, meta = manager.restore(State(jnp.int32(0), jnp.zeros(3)))
  assert int(state.step) == 1 and meta['loss'] == 0.5
  manager.close()


def test_unreadable_checkpoint_is_one_line_naming_it(tmp_path):
  directory = tmp_path / 'stage'
  manager = checkpoints.StageCheckpoints(directory)
  manager.save(State(jnp.int32(3), jnp.ones(3)), {'loss': 0.5})
  with pytest.raises(checkpoints.CheckpointError) as error:
    manager.restore(State(jnp.int32(0), jnp.zeros(5)))  # wrong shape
  assert str(directory / '3') in str(error.value)
  assert '\n' not in str(error.value)
  manager.close()


def three_checkpoints(directory):
  manager = checkpoints.StageCheckpoints(directory, keep=3)
  for step in (1, 2, 3):  # random values: the array files do not compress
    params = jax.random.normal(jax.random.PRNGKey(step), (4096,)) + step
    manager.save(State(jnp.int32(step), params), {'loss': 1. / step})
  return manager


def silently_change_values(step_dir):
  """What a read cannot notice: the arrays no longer match their checksum."""
  meta = step_dir / 'meta' / 'metadata'
  record = json.loads(meta.read_text())
  record['checksum'] = '00000000'
  meta.write_text(json.dumps(record))


def truncate_arrays(step_dir):
  files = [p for p in step_dir.rglob('*')
           if p.is_file() and p.parent.name == 'd']
  target = max(files, key=lambda p: p.stat().st_size)
  target.write_bytes(target.read_bytes()[:1000])


@pytest.mark.parametrize('damage',
                         ['arrays', 'metadata', 'values', 'truncated'])
def test_training_sets_a_damaged_checkpoint_aside_and_uses_the_one_before(
    tmp_path, damage):
  directory = tmp_path / 'checkpoints' / 'base'
  manager = three_checkpoints(directory)
  if damage == 'arrays':
    damage_arrays(directory / '3')
  elif damage == 'metadata':  # tensorstore: NOT_FOUND ... .zarray
    (directory / '3' / 'state' / 'manifest.ocdbt').unlink()
  elif damage == 'truncated':  # orbax words it, TensorStore says why
    truncate_arrays(directory / '3')
  else:
    silently_change_values(directory / '3')
  abstract = State(jnp.int32(0), jnp.zeros(4096))

  with pytest.raises(checkpoints.CheckpointError, match='3') as error:
    manager.restore_intact(abstract, repair=False)  # sample / evaluate
  assert '\n' not in str(error.value) and '<bound' not in str(error.value)
  assert manager.latest_step() == 3  # reported, not touched

  state, meta = manager.restore_intact(abstract, repair=True)
  assert int(state.step) == 2 and meta['loss'] == 0.5
  np.testing.assert_array_equal(
      state.params, jax.random.normal(jax.random.PRNGKey(2), (4096,)) + 2)
  assert manager.latest_step() == 2
  assert (tmp_path / 'checkpoints' / 'damaged' / 'base' / '3').is_dir()
  manager.close()


def test_a_stage_with_no_intact_checkpoint_stops_with_one_line(tmp_path):
  directory = tmp_path / 'checkpoints' / 'base'
  manager = three_checkpoints(directory)
  for step in (1, 2, 3):
    damage_arrays(directory / str(step))
  with pytest.raises(checkpoints.CheckpointError) as error:
    manager.restore_intact(State(jnp.int32(0), jnp.zeros(4096)), repair=True)
  message = str(error.value)
  assert '\n' not in message and str(directory) in message
  assert 'no intact checkpoint' in message
  assert sorted(p.name for p in (tmp_path / 'checkpoints' / 'damaged' /
                                 'base').iterdir()) == ['1', '2', '3']
  manager.close()
