"""The objectives: one module each, one row of `objectives.OBJECTIVES`.

A new objective needs nothing else of the pipeline: the toy below (a
student that matches its teacher's x prediction at data-noised z_t) is one
class and one table row (plus its name among the field's choices, as the
config declares every choice), and trains end to end through `main`'s loop.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffusion_distillation import objectives
from diffusion_distillation.config import choices
from diffusion_distillation.config import fields
from diffusion_distillation.config.schema import one_of
from diffusion_distillation.diffusion import process
from diffusion_distillation.diffusion import losses
from diffusion_distillation.pipeline import finished_stages
from diffusion_distillation.pipeline import loop
from diffusion_distillation.pipeline import optimization
from diffusion_distillation.pipeline import stages
from diffusion_distillation.pipeline import update

from helpers import tiny_config


class Matching(objectives.Objective):
  """Toy: the student's x at z_t, t ~ U[0, 1], regresses onto its teacher's
  x from the less noisy z_{t/2} of the same data and noise (so a student
  that starts as its teacher has a loss, and a gradient, from step 0)."""

  def draw(self, rng, batch, num_steps):
    del num_steps  # continuous time
    _, x = self.labels_and_x(batch)
    return losses.draw_noise(rng, x, 0)

  def loss(self, params, teacher_params, batch, draws, *, num_steps,
           step=None, train=True, target_params=None):
    labels, x = self.labels_and_x(batch)
    weighting = self.weighting()
    schedule, mean_type = weighting['logsnr_schedule_fn'], self.model.mean_type
    logsnr, logsnr_half = schedule(draws['u']), schedule(draws['u'] / 2)
    z = process.diffuse(x, draws['eps'], logsnr)
    z_half = process.diffuse(x, draws['eps'], logsnr_half)
    target = jax.lax.stop_gradient(process.interpret_output(
        self.model.bind(teacher_params, labels)(z_half, logsnr_half), z_half,
        logsnr_half, mean_type).x)
    pred = process.interpret_output(
        self.model.bind(params, labels)(z, logsnr), z, logsnr, mean_type)
    return losses.weighted_mse(pred, target, z, logsnr,
                               weighting['weight_type'])


def test_every_planned_objective_has_a_row():
  names = {'teacher', 'guided_teacher', 'guided_stage_one'}
  names |= {prefix + target for target in choices.DISTILLATION_TARGETS
            for prefix in ('', 'guided_')}
  names.add('tract')
  names.add('consistency')
  assert set(objectives.OBJECTIVES) == names


@pytest.mark.heavy  # starts a process
def test_a_toy_objective_is_one_module_and_one_row(tmp_path, monkeypatch):
  monkeypatch.setitem(objectives.OBJECTIVES, 'matching', Matching)
  monkeypatch.setitem(fields.FIELDS, 'distillation.target', dataclasses.replace(
      fields.FIELDS['distillation.target'],
      check=one_of(*choices.DISTILLATION_TARGETS, 'matching')))
  config = tiny_config(distillation__target='matching',
                       distillation__end_num_steps=4)
  assert [s.objective for s in stages.plan_stages(config)] == [
      'teacher', 'matching']
  summary = loop.run(config, tmp_path)
  assert [meta['stage'] for meta in summary] == ['base', 'distill_4']
  assert np.isfinite(summary[1]['loss']) and summary[1]['loss'] > 0
  ctx = loop.make_context(config, tmp_path)
  student, teacher = (finished_stages.final_params(ctx, s)
                      for s in reversed(stages.plan_stages(config)))
  moved = [not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(student), jax.tree.leaves(teacher))]
  assert any(moved)  # the student trained, from the teacher


class Anchored(objectives.Objective):
  """Toy: the squared distance of the parameters to the state's target."""

  @classmethod
  def target_decay(cls, config):
    return lambda step: 0.5

  def draw(self, rng, batch, num_steps) -> dict:
    return {}

  def loss(self, params, teacher_params, batch, draws, *, num_steps,
           step=None, train=True, target_params=None):
    distance = sum(jnp.sum(jnp.square(p - t)) for p, t in zip(
        jax.tree.leaves(params), jax.tree.leaves(target_params)))
    return jnp.full(batch['label'].shape, distance)


def test_a_target_network_is_state_the_loss_reads_and_the_update_follows():
  """`Objective.target_decay`: the state carries the target, the loss gets
  it (not differentiated), and after the update it moves by its decay."""
  opt = optimization.Optimization(
      optax.sgd(0.1), optax.constant_schedule(0.1), lambda step: 0., 0.,
      False, keeps_average=False,
      target_decay=Anchored.target_decay(None))
  state = opt.init_state({'w': jnp.ones(3)}, 2)
  assert state.ema_params is None
  np.testing.assert_array_equal(state.target_params['w'], np.ones(3))
  state = state.replace(params={'w': jnp.full(3, 2.)})
  train_steps = jax.jit(update.make_train_steps(Anchored(None), opt))
  state, metrics = train_steps(state, {'label': np.zeros((1, 4), np.int32)},
                               None, jax.random.PRNGKey(0))
  np.testing.assert_allclose(metrics['loss'], [3.])  # 3 * (2 - 1)^2
  np.testing.assert_allclose(state.params['w'], 1.8)  # 2 - 0.1 * 2 (2 - 1)
  np.testing.assert_allclose(state.target_params['w'], 1.4)  # (1 + 1.8) / 2
