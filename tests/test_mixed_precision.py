"""Mixed precision: `config.model.dtype='bfloat16'` computes the UNet in
bfloat16 while parameters and optimizer state stay float32.

On the same parameters, batch and rng, the bfloat16 model's training and
distillation losses must agree with the float32 model's, and one update with
bfloat16 compute must leave every parameter and optimizer moment float32.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from diffusion_distillation import datasets
from diffusion_distillation import model as model_lib
from diffusion_distillation import train
from diffusion_distillation import train_state

BATCH = 8
STUDENT_STEPS = 4  # a distillation stage whose student samples in 4 steps
RTOL = 5e-2
START_STEP = 50


def _config(dtype):
  # conftest's tiny model: ch=32, emb_ch=32, ch_mult=(1,), one res block,
  # attention in the middle block only; digits are 8x8x1; batch 8.
  return tiny_config(model__dtype=dtype, train__batch_size=BATCH,
                     train__substeps=1)


@functools.lru_cache(maxsize=None)
def _params():
  """Trained-looking float32 parameters: the init plus noise.

  At initialization the zero-initialised output layer makes every prediction
  exactly 0 in any dtype, which would make the comparison vacuous.
  """
  config = _config('float32')
  model = model_lib.DiffusionModel.from_config(config, (8, 8, 1), 1)
  params = model.init_params(jax.random.PRNGKey(0))
  leaves, treedef = jax.tree.flatten(params)
  rng = np.random.default_rng(1)
  noisy = [np.asarray(p) + 0.05 * rng.standard_normal(p.shape).astype(
      np.float32) for p in leaves]
  return jax.tree.unflatten(treedef, noisy)


@functools.lru_cache(maxsize=None)
def _batches():
  batch = next(datasets.get_dataset('digits', randflip=False).train_batches(
      global_batch_size=BATCH, seed=0))
  return jax.tree.map(lambda x: x[None], batch)  # one update per call


@functools.lru_cache(maxsize=None)
def _run(dtype, distill):
  """One update of the pipeline's train step; returns (new state, metrics, hlo)."""
  config = _config(dtype)
  stage = (train.Stage(1, f'distill_{STUDENT_STEPS}', 10, STUDENT_STEPS, True)
           if distill else train.plan_stages(config)[0])
  opt = train.optimization_for(config, stage)
  model = model_lib.DiffusionModel.from_config(config, (8, 8, 1), 1,
                                               dropout=opt.dropout)
  steps = jax.jit(train.make_train_steps(model, opt, jax.random.PRNGKey(3),
                                         distill=distill))
  params = _params()
  # Mid warm-up (the base learning rate is 0 at step 0), so the update moves
  # the parameters.
  state = train_state.create(params, opt.tx, stage.num_sample_steps).replace(
      step=jnp.asarray(START_STEP, jnp.int32))
  teacher = params if distill else None
  lowered = steps.lower(state, _batches(), teacher)
  new_state, metrics = lowered.compile()(state, _batches(), teacher)
  return new_state, jax.device_get(metrics), lowered.as_text()


@pytest.mark.parametrize('distill', [False, True], ids=['base', 'distill'])
def test_bfloat16_loss_matches_float32(distill):
  _, ref, ref_hlo = _run('float32', distill)
  _, mixed, mixed_hlo = _run('bfloat16', distill)
  assert 'bf16' not in ref_hlo
  assert 'bf16' in mixed_hlo  # the network really computes in bfloat16
  loss_ref, loss_mixed = float(ref['loss'][0]), float(mixed['loss'][0])
  assert np.isfinite(loss_mixed) and loss_ref > 0
  assert loss_mixed != loss_ref  # bfloat16 changed the numbers a little...
  np.testing.assert_allclose(loss_mixed, loss_ref, rtol=RTOL)  # ...only
  np.testing.assert_allclose(mixed['grad_norm'], ref['grad_norm'], rtol=0.1)


@pytest.mark.parametrize('distill', [False, True], ids=['base', 'distill'])
def test_state_stays_float32_under_bfloat16(distill):
  state, _, _ = _run('bfloat16', distill)
  assert int(state.step) == START_STEP + 1
  for part in ('params', 'ema_params', 'opt_state'):
    leaves = [x for x in jax.tree.leaves(getattr(state, part))
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    assert leaves, part
    assert {x.dtype for x in leaves} == {jnp.dtype(jnp.float32)}, part
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in leaves), part
  # The update moved the float32 parameters by float32-sized steps.
  changed = [not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(state.params), jax.tree.leaves(_params()))]
  assert any(changed)
