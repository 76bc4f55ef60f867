"""Distilling from a teacher checkpoint that was not trained in the workdir."""

import jax
import numpy as np
import pytest

from diffusion_distillation import config as config_lib
from diffusion_distillation.pipeline import loop
from diffusion_distillation.pipeline import official_checkpoints
from diffusion_distillation.pipeline import workdirs

from helpers import tiny_config

pytestmark = pytest.mark.heavy  # processes, training: not the fast tier


def _teacher_params(config, seed=1):
  ctx = loop.make_context(config, '/unused')
  params = ctx.base_model.init_params(jax.random.PRNGKey(seed))
  # Non-zero output layers, so that the teacher is not the zero function.
  return jax.tree.map(lambda p: p + 0.01, params)


def test_distills_from_an_official_checkpoint(tmp_path):
  config = tiny_config(train__num_train_steps=0,
                       distillation__start_num_steps=4)
  params = _teacher_params(config)
  path = official_checkpoints.write_official_checkpoint(
      str(tmp_path / 'cifar_like'), params, num_sample_steps=4)
  config.distillation.teacher_checkpoint_path = path
  summary = loop.run(config, str(tmp_path / 'run'))
  assert [m['stage'] for m in summary] == ['distill_2', 'distill_1']

  loaded = workdirs.open_workdir(str(tmp_path / 'run'))
  for ours, theirs in zip(jax.tree.leaves(loaded.teacher_params()),
                          jax.tree.leaves(params)):
    np.testing.assert_array_equal(ours, theirs)
  assert loaded.student_steps() == [1, 2]


def test_teacher_step_count_must_match_start(tmp_path):
  config = tiny_config(train__num_train_steps=0)  # start_num_steps = 8
  path = official_checkpoints.write_official_checkpoint(
      str(tmp_path / 'ckpt'), _teacher_params(config), num_sample_steps=4)
  config.distillation.teacher_checkpoint_path = path
  with pytest.raises(config_lib.ConfigError,
                     match='start_num_steps=4'):
    loop.run(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()  # rejected before writing anything


def test_architecture_mismatch_names_first_parameter(tmp_path):
  small = tiny_config(train__num_train_steps=0)
  path = official_checkpoints.write_official_checkpoint(
      str(tmp_path / 'ckpt'), _teacher_params(small), num_sample_steps=0)
  wide = tiny_config(train__num_train_steps=0, model__args__ch=64)
  wide.distillation.teacher_checkpoint_path = path
  with pytest.raises(config_lib.ConfigError,
                     match=r"teacher_checkpoint_path.*conv_in"):
    loop.run(wide, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_distills_from_our_own_workdir(finished_workdir, tmp_path):
  source, _ = finished_workdir
  config = tiny_config(train__num_train_steps=0,
                       distillation__start_num_steps=2,
                       distillation__teacher_checkpoint_path=str(source))
  summary = loop.run(config, str(tmp_path / 'run'))
  assert [m['stage'] for m in summary] == ['distill_1']
