"""The official training semantics that the port offers (issue 13).

Per-device gradient clipping, momentum / Nesterov, `avg_type` averaging, the
update skip, the eval loss during training, the variational bound, the
eps-parameterized DDIM step and the official config fields, each against a
hand computation of the official code's formulas.
"""

import dataclasses
import functools
import json
import shutil
import subprocess

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from diffusion_distillation import config as config_lib
from diffusion_distillation import objectives
from diffusion_distillation.config import ConfigError
from diffusion_distillation.diffusion import likelihood
from diffusion_distillation.diffusion import losses
from diffusion_distillation.diffusion import process
from diffusion_distillation.diffusion import schedules
from diffusion_distillation.pipeline import checkpoints
from diffusion_distillation.pipeline import eval_loss
from diffusion_distillation.pipeline import loop
from diffusion_distillation.pipeline import optimization
from diffusion_distillation.pipeline import stages
from diffusion_distillation.pipeline import train_state
from diffusion_distillation.pipeline import update

from helpers import PYTHON
from helpers import REPO
from helpers import subprocess_env
from helpers import tiny_config

# Runs on 4 fake devices: one update with per-device clipping against the
# hand computation (per-shard gradient, clipped, then the mean), and against
# the global clipping of the same batch.
_PER_DEVICE = r'''
import jax, numpy as np, optax
import helpers
from diffusion_distillation.parallel import sharding
from diffusion_distillation import objectives
from diffusion_distillation.pipeline import loop, optimization, stages
from diffusion_distillation.pipeline import train_state, update

CLIP, KEY = 0.01, jax.random.PRNGKey(3)

def one_update(per_device):
  config = helpers.tiny_config(
      train__grad_clip=CLIP, train__learning_rate_warmup_steps=0,
      train__optimizer='momentum', train__grad_clip_per_device=per_device)
  ctx = loop.make_context(config, 'unused')
  stage = stages.plan_stages(config)[0]
  opt = optimization.optimization_for(config, stage)
  model = optimization.stage_model(ctx, opt)
  params = ctx.base_model.init_params(jax.random.PRNGKey(0))
  state = train_state.create(params, opt.tx, 0)
  batch = next(ctx.dataset.train_batches(global_batch_size=8, seed=0))
  steps = update.compile_train_steps(
      update.make_train_steps(objectives.make('teacher', model), opt),
      ctx.mesh)
  new, metrics = steps(
      sharding.replicate(jax.tree.map(np.array, state), ctx.mesh),
      sharding.global_batch(update.stack_batches([batch]), ctx.mesh, 1), None,
      KEY)
  return model, opt, params, state, batch, sharding.to_host(new.params)

assert jax.device_count() == 4
model, opt, params, state, batch, got = one_update(True)
objective = objectives.make('teacher', model)
loss_fn = lambda params, shard, rng: objective.loss(
    params, None, shard, objective.draw(rng, shard, 0), num_steps=0).mean()
clipped, norms = [], []
for k in range(4):  # device k: examples 2k, 2k + 1; rng folded with k
  shard = jax.tree.map(lambda b: b[2 * k:2 * k + 2], batch)
  rng = jax.random.fold_in(jax.random.fold_in(KEY, 0), k)
  grad = jax.grad(loss_fn)(params, shard, rng)
  norm = float(optax.tree.norm(grad))
  norms.append(norm)
  clipped.append(jax.tree.map(lambda g: g * min(1., CLIP / norm), grad))
mean = jax.tree.map(lambda *g: sum(g) / 4., *clipped)
want = optax.apply_updates(params, opt.tx.update(mean, state.opt_state,
                                                 params)[0])
step = lambda p: np.concatenate([np.ravel(a - b) for a, b in zip(
    jax.tree.leaves(p), jax.tree.leaves(params))])
assert min(norms) > CLIP, norms  # every shard clips
error = np.max(np.abs(step(got) - step(want)))
change = np.max(np.abs(step(got) - step(one_update(False)[-1])))
print('PER_DEVICE', error, change, np.max(np.abs(step(want))))
'''


@pytest.mark.slow
def test_per_device_clipping_is_clip_then_mean_on_four_devices():
  result = subprocess.run([PYTHON, '-c', _PER_DEVICE], cwd=f'{REPO}/tests',
                          env=subprocess_env(4), capture_output=True,
                          text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  line = [l for l in result.stdout.splitlines() if l.startswith('PER_DEVICE')]
  error, change, size = map(float, line[0].split()[1:])
  assert error <= 1e-6 * size  # = the hand computation
  assert change > 0.05 * size  # != clipping the mean gradient


def _tree():
  return {'a': jnp.array([1., -2.]), 'b': jnp.array([[0.5]])}


def _grads(k):
  return {'a': jnp.array([0.3, -0.1]) * (k + 1), 'b': jnp.array([[0.2]]) - k}


@pytest.mark.parametrize('nesterov', [False, True])
def test_momentum_and_nesterov_are_the_official_flax_optimizers(nesterov):
  """flax.optim.Momentum: g += wd * p; m = beta m + g; p -= lr (m or
  g + beta m)."""
  lr, beta, wd = 0.1, 0.8, 0.01
  tx = optimization.make_optimizer(
      optax.constant_schedule(lr), grad_clip=100., weight_decay=wd,
      optimizer='nesterov' if nesterov else 'momentum', beta=beta)
  params, opt_state = _tree(), None
  opt_state = tx.init(params)
  hand = jax.tree.map(np.asarray, params)
  momentum = jax.tree.map(np.zeros_like, hand)
  for k in range(3):
    updates, opt_state = tx.update(_grads(k), opt_state, params)
    params = optax.apply_updates(params, updates)
    g = jax.tree.map(lambda g, p: np.asarray(g) + wd * p, _grads(k), hand)
    momentum = jax.tree.map(lambda m, g: beta * m + g, momentum, g)
    d = (jax.tree.map(lambda g, m: g + beta * m, g, momentum) if nesterov
         else momentum)
    hand = jax.tree.map(lambda p, d: p - lr * d, hand, d)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(hand)):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def _average(decay_fn, steps):
  """EMA of the parameter sequence p_k = k + 1 (after step k), as update.py."""
  ema = jnp.zeros(())
  for k in range(steps):
    ema = train_state.update_ema(ema, jnp.float32(k + 1),
                                 decay_fn(jnp.int32(k)), jnp.int32(k))
  return float(ema)


def test_avg_type_aa_is_the_mean_since_the_last_multiple_of_avg_steps():
  aa = optimization.ema_decay_schedule(None, 'aa', 4)
  assert _average(aa, 3) == pytest.approx(np.mean([1, 2, 3]))
  assert _average(aa, 4) == pytest.approx(np.mean([1, 2, 3, 4]))
  assert _average(aa, 6) == pytest.approx(np.mean([5, 6]))  # restarted


def test_avg_type_ema_decays_by_one_over_avg_steps_and_ema_decay_wins():
  ema = optimization.ema_decay_schedule(None, 'ema', 4)
  hand = 1.
  for p in (2., 3.):
    hand = 0.75 * hand + 0.25 * p
  assert _average(ema, 3) == pytest.approx(hand)
  assert optimization.ema_decay_schedule(0.5, 'aa', 4)(jnp.int32(3)) == 0.5
  assert _average(optimization.ema_decay_schedule(None), 3) == 3.  # no avg
  config = tiny_config(train__avg_type='aa', train__avg_steps=4)
  with pytest.raises(ConfigError, match='config.train.avg_type: .*precedence'):
    config_lib.validate_config(config)
  config.train.ema_decay = None
  config_lib.validate_config(config)
  opt = optimization.optimization_for(config, stages.plan_stages(config)[0])
  assert float(opt.ema_decay(jnp.int32(5))) == pytest.approx(0.5)


@pytest.mark.slow
def test_update_skip_checks_the_new_parameters_not_the_gradients():
  """Finite gradients, an update that overflows: the official check of the
  new parameters skips it (optax.apply_if_finite, on gradients, would not)."""
  config = tiny_config(train__enable_update_skip=True)
  ctx = loop.make_context(config, 'unused')
  stage = stages.plan_stages(config)[0]
  opt = dataclasses.replace(  # steps of 1e60 * gradient: inf parameters
      optimization.optimization_for(config, stage),
      tx=optax.chain(optax.scale(1e30), optax.scale(1e30)))
  steps = functools.partial(jax.jit(update.make_train_steps(
      objectives.make('teacher', optimization.stage_model(ctx, opt)), opt)),
      key=jax.random.PRNGKey(0))
  state = train_state.create(ctx.base_model.init_params(
      jax.random.PRNGKey(0)), opt.tx, 0)
  batch = next(ctx.dataset.train_batches(global_batch_size=8, seed=0))
  after, metrics = steps(state, update.stack_batches([batch]), None)
  assert np.isfinite(float(metrics['grad_norm'][0]))
  assert float(metrics['skipped'][0]) == 1. and int(after.step) == 1
  for a, b in zip(jax.tree.leaves(after.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, b)


@pytest.fixture(scope='module')
def eval_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('eval_loss')
  config = tiny_config(train__eval_every_steps=2,
                       distillation__start_num_steps=2)
  loop.run(config, str(workdir))
  return config, workdir


def _scalars(directory, tag):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  acc = event_accumulator.EventAccumulator(str(directory))
  acc.Reload()
  return {e.step: e.value for e in acc.Scalars(tag)}


@pytest.mark.heavy  # starts a process
def test_eval_loss_every_eval_every_steps_with_ema_parameters(eval_run):
  config, workdir = eval_run
  base, student = stages.plan_stages(config)
  for stage in (base, student):
    logged = _scalars(workdir / 'tensorboard' / stage.name, 'eval/loss')
    assert sorted(logged) == [2, 4]
  ctx = loop.make_context(config, workdir)
  final = checkpoints.StageCheckpoints(
      workdir / 'checkpoints' / 'base', read_only=True).restore_as_saved()[0]
  # A fresh evaluator (as after a restart) gives the logged value again.
  again = eval_loss.EvalLoss(ctx, base).loss(final['ema_params'], None, 4)
  logged = _scalars(workdir / 'tensorboard' / 'base', 'eval/loss')
  assert again == pytest.approx(logged[4], rel=1e-6)
  raw = eval_loss.EvalLoss(ctx, base).loss(final['params'], None, 4)
  assert abs(raw - again) > 1e-4  # the EMA's loss, not the raw parameters'


def test_bpd_is_the_hand_computed_variational_bound():
  """A tiny 'network' (x prediction 0.5 z) on 2 steps against numpy."""
  x = np.array([[[[-1.], [0.2]], [[1.], [-0.4]]]], np.float32)
  noise = np.random.default_rng(0).normal(size=(3, *x.shape)).astype(
      np.float32)
  schedule = schedules.get_logsnr_schedule('cosine', logsnr_min=-6.,
                                           logsnr_max=6.)
  got = likelihood.bpd(lambda z, logsnr: 0.5 * z, jnp.asarray(x),
                       lambda i: jnp.asarray(noise)[i], num_steps=2,
                       logsnr_schedule_fn=schedule, mean_type='x')
  lam = [float(schedule(u)) for u in (0., 0.5, 1.)]
  sig = lambda l: 1. / (1. + np.exp(-l))
  x64 = x.astype(np.float64)
  kl = lambda m1, v1, m2, v2: 0.5 * (np.log(v2 / v1) + (v1 + (m1 - m2) ** 2)
                                     / v2 - 1.)
  prior = kl(np.sqrt(sig(lam[2])) * x64, sig(-lam[2]), 0., 1.).mean()

  def reverse(x0, z, t, s, var):  # q(z_s | z_t, x0): mean, variance
    r = np.exp(lam[t] - lam[s])
    mean = r * np.sqrt(sig(lam[s]) / sig(lam[t])) * z + (
        1 - r) * np.sqrt(sig(lam[s])) * x0
    return mean, (1 - r) * sig(-lam[var])

  z2 = np.sqrt(sig(lam[2])) * x64 + np.sqrt(sig(-lam[2])) * noise[2]
  diffusion = kl(*reverse(x64, z2, 2, 1, 1), *reverse(0.5 * z2, z2, 2, 1,
                                                       2)).mean()
  z1 = np.sqrt(sig(lam[1])) * x64 + np.sqrt(sig(-lam[1])) * noise[1]
  mean, var = reverse(0.5 * z1, z1, 1, 0, 1)
  from scipy.stats import norm  # pylint: disable=g-import-not-at-top
  cdf = lambda v: norm.cdf((v - mean) / np.sqrt(var))
  prob = np.where(x64 < -0.999, cdf(x64 + 1 / 255),
                  np.where(x64 > 0.999, 1 - cdf(x64 - 1 / 255),
                           cdf(x64 + 1 / 255) - cdf(x64 - 1 / 255)))
  decoder = -np.log(prob).mean()
  for name, value in (('prior', prior), ('diffusion', diffusion),
                      ('decoder', decoder)):
    np.testing.assert_allclose(got[name][0], value / np.log(2.), rtol=2e-4)
  np.testing.assert_allclose(got['bpd'][0], (prior + diffusion + decoder) /
                             np.log(2.), rtol=2e-4)


@pytest.mark.heavy  # starts a process
def test_evaluate_metric_bpd_scores_the_teacher(finished_workdir, tmp_path):
  reference, _ = finished_workdir
  workdir = tmp_path / 'copy'
  shutil.copytree(reference, workdir)
  result = subprocess.run(
      [PYTHON, '-m', 'diffusion_distillation.evaluate', f'--workdir={workdir}',
       '--metric=bpd', '--num_samples=16', '--teacher_steps=4'], cwd=REPO,
      env=subprocess_env(), capture_output=True, text=True, timeout=600,
      check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  saved = json.loads((workdir / 'eval' / 'bpd.json').read_text())
  assert saved['num_examples'] == 16 and saved['num_steps'] == 4
  assert saved['bpd'] == pytest.approx(
      saved['prior'] + saved['diffusion'] + saved['decoder'], rel=1e-5)
  assert 'bits/dim' in result.stdout


def test_eps_ddim_step_keeps_the_network_eps_at_extreme_logsnr():
  """Official ddim_step: z_s = alpha_s x + sigma_s eps_network (mean_type
  'eps', no clipping); eps re-derived from x loses it in float32."""
  rng = np.random.default_rng(0)
  z = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
  eps_net = rng.normal(size=z.shape).astype(np.float32)
  logsnr_t, logsnr_s = jnp.full((2,), 18.), jnp.full((2,), 19.)
  pred = process.interpret_output(jnp.asarray(eps_net), z, logsnr_t, 'eps')
  got = process.ddim_step(z, pred.x, logsnr_t, logsnr_s, pred.eps)
  alpha_s, sigma_s = process.alpha_sigma(19.)
  official = alpha_s * pred.x + sigma_s * eps_net
  np.testing.assert_array_equal(got, official)
  recomputed = process.ddim_step(z, pred.x, logsnr_t, logsnr_s)
  assert not np.array_equal(recomputed, official)


@pytest.mark.parametrize('field,value', [
    ('train.retain_checkpoint_every_steps', 20000),
    ('dataset.args.extra_image_sizes', (32,)),
    ('train.learning_rate_anneal_steps', 50000),
    ('train.learning_rate_anneal_type', 'linear'),
    ('distillation.only_finetune_temb', True),
    ('model.name', 'other'),
    ('model.logvar_coeff', 0.1),
    ('dataset.args.image_size', 64),
    ('dataset.args.subset', 'church'),
])
def test_unimplemented_official_fields_are_refused_by_name(field, value):
  config = tiny_config()
  *parents, leaf = field.split('.')
  node = config
  for part in parents:
    node = node[part]
  with node.ignore_type():
    node[leaf] = value
  with pytest.raises(ConfigError, match=f'config.{field}: is set to'):
    config_lib.validate_config(config)


def test_official_fields_with_no_effect_are_accepted():
  config = tiny_config()
  config.model.name = 'unet_iddpm'
  config.model.logvar_coeff = 0.
  config.distillation.only_finetune_temb = False
  config.dataset.args.extra_image_sizes = ()
  config_lib.validate_config(config)


def test_a_workdir_made_before_the_new_fields_reruns_unchanged():
  config = tiny_config()
  saved = config.to_dict()
  for field in ('grad_clip_per_device', 'optimizer_beta', 'avg_type',
                'avg_steps', 'eval_every_steps'):
    del saved['train'][field]
  saved = json.loads(ml_collections.ConfigDict(saved).to_json())
  assert config_lib.check_rerun(saved, config).notices == []


def test_distillation_target_of_an_eps_teacher_uses_its_eps():
  """dpm.training_losses: z_mid = a_mid x_pred + s_mid eps_pred with the
  teacher's eps output, then the same from z_mid to s, at high logSNR."""
  rng = np.random.default_rng(1)
  z = jnp.asarray(rng.normal(size=(4, 8, 8, 3)).astype(np.float32))
  teacher = lambda z, logsnr: 0.3 * z + 0.1  # an eps network
  schedule = schedules.get_logsnr_schedule('cosine', logsnr_min=-20.,
                                           logsnr_max=20.)
  num_steps, i = 8192, jnp.full((4,), 1)  # u = 2 / 8192: logSNR 15.5
  u = (i + 1) / num_steps
  got = losses.teacher_target(teacher, z, u, i, num_steps,
                              logsnr_schedule_fn=schedule, mean_type='eps')
  bc = lambda v: v[:, None, None, None]
  lam_t, lam_mid, lam_s = (schedule(u), schedule(u - 0.5 / num_steps),
                           schedule(u - 1. / num_steps))
  a, s = lambda l: bc(jnp.sqrt(jax.nn.sigmoid(l))), lambda l: bc(
      jnp.sqrt(jax.nn.sigmoid(-l)))
  eps = teacher(z, lam_t)
  z_mid = a(lam_mid) * process.x_from_eps(z, eps, lam_t) + s(lam_mid) * eps
  eps = teacher(z_mid, lam_mid)
  z_s = a(lam_s) * process.x_from_eps(z_mid, eps, lam_mid) + s(lam_s) * eps
  official = process.distillation_target(z, z_s, lam_t, lam_s)
  # Bit for bit (re-deriving eps from x, as before, is off by a few ulps).
  np.testing.assert_array_equal(got, official)
