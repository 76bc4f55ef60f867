"""Stage checkpoints: a failed save says where, and leaves the last one intact."""

import flax
import jax.numpy as jnp
import orbax.checkpoint as ocp
import pytest

from diffusion_distillation.pipeline import checkpoints


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
  assert 'No space left on device' in message and '(details)' not in message
  assert 'previous checkpoint is intact' in message
  monkeypatch.undo()

  assert manager.latest_step() == 1
  state, meta = manager.restore(State(jnp.int32(0), jnp.zeros(3)))
  assert int(state.step) == 1 and meta == {'loss': 0.5}
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
