"""Gradient accumulation (`train.num_microbatches`): the same update."""

import dataclasses

import jax
import jax.numpy as jnp
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

pytestmark = pytest.mark.slow  # end-to-end runs

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


def test_accumulation_slices_arrays_and_sets_the_rows_of_batch_keys():
  key = jax.random.PRNGKey(3)
  x = jax.random.normal(jax.random.PRNGKey(4), (BATCH, 3))
  seen = []

  def per_example(params, inputs):
    noise = microbatches.draw(jax.random.normal, inputs['key'].key,
                              inputs['x'].shape, inputs['key'].rows)
    seen.append(inputs['key'].rows)
    return jnp.sum(params * inputs['x'] * noise, axis=1)

  inputs = {'x': x, 'key': microbatches.BatchKey(key)}
  whole = microbatches.value_and_grad(per_example, 1)(jnp.ones(3), inputs)
  parts = microbatches.value_and_grad(per_example, PARTS)(jnp.ones(3), inputs)
  for a, b in zip(parts, whole):  # (loss, gradient), up to float rounding
    np.testing.assert_allclose(a, b, rtol=1e-5)
  assert seen[0] is None and seen[1].count == PARTS


def _guided_config():
  return set_fields(load_config('digits_guided'), TINY_OVERRIDES)


CASES = {  # objective: (config, the stage's sampler steps); with dropout each
    'teacher': (tiny_config, 0),  # continuous time
    'guided_teacher': (_guided_config, 0),  # label dropout
    'guided_progressive': (_guided_config, 4),  # the teacher's two
                                                # steps, w per example
}


def _update(objective, parts):
  make_config, num_steps = CASES[objective]
  config = make_config()
  config.train.num_microbatches = parts
  # SGD at a learning rate from step 0: the update is the gradient (Adam's
  # first step would be its sign, for any gradient).
  config.train.optimizer = 'momentum'
  config.train.learning_rate_warmup_steps = 0
  dataset = data_lib.from_config(config)
  stage = next(s for s in stages.plan_stages(config)
               if s.objective == objective)
  stage = dataclasses.replace(stage, num_sample_steps=num_steps)
  opt = optimization.optimization_for(config, stage)
  if stage.trains_student:  # dropout too, to check the students' masks
    opt = dataclasses.replace(opt, dropout=0.1)
  model = model_lib.DiffusionModel.from_config(
      config, dataset.data_shape, dataset.num_classes, dropout=opt.dropout)
  params = random_params(model, 0)
  teacher = random_params(model, 1) if stage.trains_student else None
  state = train_state.create(params, opt.tx, stage.num_sample_steps)
  batch = next(dataset.train_batches(global_batch_size=BATCH, seed=0))
  steps = jax.jit(update.make_train_steps(
      stage.objective_for(model), opt)).lower(
      state, update.stack_batches([batch]), teacher, jax.random.PRNGKey(2))
  # LLVM's optimizations triple the compile time and do not change numerics.
  new, metrics = steps.compile({'xla_backend_optimization_level': 0})(
      state, update.stack_batches([batch]), teacher, jax.random.PRNGKey(2))
  return state.params, new, metrics


@pytest.mark.parametrize('objective', list(CASES))
def test_four_microbatches_make_the_full_batchs_update(objective):
  before, whole, whole_metrics = _update(objective, 1)
  _, parts, parts_metrics = _update(objective, PARTS)
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
