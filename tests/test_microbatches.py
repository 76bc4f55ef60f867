"""Gradient accumulation (`train.num_microbatches`): the same update."""

import dataclasses

import jax
import numpy as np
import pytest

from diffusion_distillation import config as config_lib
from diffusion_distillation import data as data_lib
from diffusion_distillation.models import diffusion_model as model_lib
from diffusion_distillation.parallel import microbatches
from diffusion_distillation.pipeline import optimization
from diffusion_distillation.pipeline import stages
from diffusion_distillation.pipeline import train_state
from diffusion_distillation.pipeline import update

from helpers import load_config
from helpers import random_params
from helpers import set_fields
from helpers import tiny_config
from helpers import TINY_OVERRIDES

BATCH, PARTS = 8, 4


def test_a_microbatch_takes_its_rows_of_the_whole_batchs_draw():
  rng = jax.random.PRNGKey(0)
  whole = jax.random.normal(rng, (BATCH, 3))
  parts = microbatches.split(whole, PARTS)
  for j in range(PARTS):
    part = microbatches.Microbatch(j, PARTS)
    np.testing.assert_array_equal(parts[j], whole[j::PARTS])
    np.testing.assert_array_equal(part.take(whole), whole[j::PARTS])
    np.testing.assert_array_equal(
        microbatches.draw(jax.random.normal, rng, (BATCH // PARTS, 3), part),
        whole[j::PARTS])


def _guided_config():
  return set_fields(load_config('digits_guided'), TINY_OVERRIDES)


CASES = {  # kind: (config, the stage's sampler steps); with dropout each
    stages.TEACHER: (tiny_config, 0),  # continuous time
    stages.GUIDED_TEACHER: (_guided_config, 0),  # label dropout
    stages.GUIDED_DISTILLATION: (_guided_config, 4),  # the teacher's two
                                                     # steps, w per example
}


def _update(kind, parts):
  make_config, num_steps = CASES[kind]
  config = make_config()
  config.train.num_microbatches = parts
  # SGD at a learning rate from step 0: the update is the gradient (Adam's
  # first step would be its sign, for any gradient).
  config.train.optimizer = 'momentum'
  config.train.learning_rate_warmup_steps = 0
  dataset = data_lib.from_config(config)
  stage = stages.Stage(1, 'stage', 10, num_steps, kind)
  opt = optimization.optimization_for(config, stage)
  if stage.is_distillation:  # dropout too, to check the students' masks
    opt = dataclasses.replace(opt, dropout=0.1)
  model = model_lib.DiffusionModel.from_config(
      config, dataset.data_shape, dataset.num_classes, dropout=opt.dropout)
  params = random_params(model, 0)
  teacher = random_params(model, 1) if stage.is_distillation else None
  state = train_state.create(params, opt.tx, num_steps)
  batch = next(dataset.train_batches(global_batch_size=BATCH, seed=0))
  steps = jax.jit(update.make_train_steps(model, opt, kind)).lower(
      state, update.stack_batches([batch]), teacher, jax.random.PRNGKey(2))
  # LLVM's optimizations triple the compile time and do not change numerics.
  new, metrics = steps.compile({'xla_backend_optimization_level': 0})(
      state, update.stack_batches([batch]), teacher, jax.random.PRNGKey(2))
  return state.params, new, metrics


@pytest.mark.parametrize('kind', list(CASES))
def test_four_microbatches_make_the_full_batchs_update(kind):
  before, whole, whole_metrics = _update(kind, 1)
  _, parts, parts_metrics = _update(kind, PARTS)
  np.testing.assert_allclose(parts_metrics['loss'], whole_metrics['loss'],
                             rtol=1e-5)
  np.testing.assert_allclose(parts_metrics['grad_norm'],
                             whole_metrics['grad_norm'], rtol=1e-4)
  for a, b, c in zip(jax.tree.leaves(parts.params),
                     jax.tree.leaves(whole.params), jax.tree.leaves(before)):
    np.testing.assert_allclose(a - c, b - c, rtol=1e-3, atol=1e-7)
  assert not all(np.array_equal(b, c) for b, c in zip(
      jax.tree.leaves(whole.params), jax.tree.leaves(before)))


def test_microbatches_must_divide_the_batch_per_device():
  config = config_lib.complete(tiny_config(train__num_microbatches=3))
  with pytest.raises(config_lib.ConfigError,
                     match=r'train\.num_microbatches.*3 must divide the batch '
                           r'per device, 4 \(train\.batch_size 8 / 2 devices'):
    config_lib.validate_config(config, device_count=2, process_count=1)
