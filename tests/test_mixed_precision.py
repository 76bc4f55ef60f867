"""Mixed precision: `config.model.dtype='bfloat16'` computes the UNet in
bfloat16 while parameters and optimizer state stay float32.

On the same parameters, batch and rng, the bfloat16 model's training and
distillation losses (as `update.make_train_steps` reports them) must agree with
the float32 model's, and an update with bfloat16 compute must leave every
parameter, EMA parameter and optimizer moment float32.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_distillation import data as data_lib
from diffusion_distillation import objectives
from diffusion_distillation.models import diffusion_model as model_lib
from diffusion_distillation.pipeline import optimization
from diffusion_distillation.pipeline import stages
from diffusion_distillation.pipeline import train_state
from diffusion_distillation.pipeline import update

from helpers import tiny_config

BATCH = 8
STUDENT_STEPS = 4  # a distillation stage whose student samples in 4 steps
RTOL = 5e-2


def _start_step(distill):
  return 0 if distill else 50


def _config(dtype):
  # conftest's tiny model: ch=32, emb_ch=32, ch_mult=(1,), one res block,
  # attention in the middle block only; digits are 8x8x1; batch 8.
  return tiny_config(model__dtype=dtype, train__batch_size=BATCH,
                     train__substeps=1)


@functools.lru_cache(maxsize=None)
def _params():
  """Random, roughly fan-in scaled float32 parameters, made with numpy.

  Not the initialization: its zero-initialised output layer makes every
  prediction exactly 0 in any dtype, which would make the comparison vacuous
  (and flax's initializers cost many small compilations on CPU).
  """
  model = model_lib.DiffusionModel.from_config(_config('float32'), (8, 8, 1),
                                               1)
  shapes = jax.eval_shape(model.init_params, jax.random.PRNGKey(0))
  rng = np.random.default_rng(1)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    if 'kernel' in name:
      return noise / np.sqrt(np.prod(leaf.shape[:-1]))
    return (1. if 'scale' in name else 0.) + 0.1 * noise

  return jax.tree_util.tree_map_with_path(fill, shapes)


@functools.lru_cache(maxsize=None)
def _batches():
  batch = next(data_lib.get_dataset('digits', randflip=False).train_batches(
      global_batch_size=BATCH, seed=0))
  return jax.tree.map(lambda x: x[None], batch)  # one update per call


def _train_steps(dtype, distill):
  """The pipeline's update for this dtype: (train_steps, state, teacher)."""
  config = _config(dtype)
  stage = (stages.Stage(1, f'distill_{STUDENT_STEPS}', 10, STUDENT_STEPS,
                        'progressive')
           if distill else stages.plan_stages(config)[0])
  opt = optimization.optimization_for(config, stage)
  model = model_lib.DiffusionModel.from_config(config, (8, 8, 1), 1,
                                               dropout=opt.dropout)
  params = _params()
  # Base training starts mid warm-up (its learning rate is 0 at step 0), so
  # that the update moves the parameters; distillation's learning rate is
  # annealed from its peak at step 0.
  state = train_state.create(params, opt.tx, stage.num_sample_steps).replace(
      step=jnp.asarray(_start_step(distill), jnp.int32))
  return (functools.partial(update.make_train_steps(
              objectives.make(stage.objective, model), opt),
              key=jax.random.PRNGKey(3)),
          state, params if distill else None)


def _compile(fn, *args):
  lowered = jax.jit(fn).lower(*args)
  # LLVM's optimizations triple the compile time and do not change numerics.
  return lowered.compile({'xla_backend_optimization_level': 0}), lowered


@functools.lru_cache(maxsize=None)
def _loss(dtype, distill):
  """The loss an update reports, and the HLO of the program computing it.

  Only the loss is returned, so XLA drops the backward pass and the optimizer
  from the program: a fraction of the compile time of the whole update.
  """
  steps, state, teacher = _train_steps(dtype, distill)
  compiled, lowered = _compile(
      lambda s, b, t: steps(s, b, t)[1]['loss'][0], state, _batches(),
      teacher)
  return float(compiled(state, _batches(), teacher)), lowered.as_text()


@pytest.mark.parametrize('distill', [False, True], ids=['base', 'distill'])
def test_bfloat16_loss_matches_float32(distill):
  loss_ref, ref_hlo = _loss('float32', distill)
  loss_mixed, mixed_hlo = _loss('bfloat16', distill)
  assert 'bf16' not in ref_hlo
  assert 'bf16' in mixed_hlo  # the network really computes in bfloat16
  assert np.isfinite(loss_mixed) and loss_ref > 0
  assert loss_mixed != loss_ref  # bfloat16 changed the numbers a little...
  np.testing.assert_allclose(loss_mixed, loss_ref, rtol=RTOL)  # ...only


@pytest.mark.parametrize('distill', [False, True], ids=['base', 'distill'])
def test_state_stays_float32_under_bfloat16(distill):
  """Dtypes are static: tracing the update (no compile) shows them exactly."""
  steps, state, teacher = _train_steps('bfloat16', distill)
  new_state, metrics = jax.eval_shape(steps, state, _batches(), teacher)
  for part in ('params', 'ema_params', 'opt_state'):
    leaves = [x for x in jax.tree.leaves(getattr(new_state, part))
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    assert leaves, part
    assert {x.dtype for x in leaves} == {jnp.dtype(jnp.float32)}, part
  assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(
      lambda x: x.dtype, state)  # nothing changed dtype, step counters neither
  assert {m.dtype for m in metrics.values()} == {jnp.dtype(jnp.float32)}
