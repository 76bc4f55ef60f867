"""Tests for the UNet denoiser (diffusion_distillation/unet.py)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_distillation.config import choices
from diffusion_distillation.models import unet

B, SIZE = 2, 8

# Tiny but complete: two levels (so down/upsampling exist), attention at the
# lower level, two heads, dropout on. ch=32 is the least GroupNorm(32) allows.
TINY = dict(
    num_classes=1, out_ch=3, ch=32, emb_ch=32, ch_mult=(1, 2),
    num_res_blocks=1, attn_resolutions=(4,), num_heads=2, dropout=0.5,
    logsnr_input_type='inv_cos', resblock_resample=False)

# Smallest UNet: one level, so no resampling, and attention only in the middle.
# Cheap to compile, for variants that only change the conditioning path.
MINIMAL = dict(TINY, ch_mult=(1,), attn_resolutions=())

# The CIFAR-10 model of the paper (mean_type 'x', so out_ch=3).
CIFAR10 = dict(
    num_classes=1, out_ch=3, ch=256, emb_ch=1024, ch_mult=(1, 1, 1),
    num_res_blocks=3, attn_resolutions=(8, 16), num_heads=1, dropout=0.2,
    logsnr_input_type='inv_cos', resblock_resample=True)
# Confirmed once by running the official google-research unet.py on this
# config: same count and the same tree of parameter paths and shapes.
CIFAR10_PARAM_COUNT = 60_004_099


# Compile-time savers. One XLA compile of the whole network is much cheaper on
# CPU than eager mode's per-op compiles, and skipping LLVM's optimizations makes
# it about three times cheaper again; these tests do not need fast code.
quick_jit = functools.partial(
    jax.jit, compiler_options={'xla_backend_optimization_level': 0})


def make_inputs(num_classes=1, size=SIZE, seed=0):
  kx, kl, ky = jax.random.split(jax.random.PRNGKey(seed), 3)
  x = jax.random.normal(kx, (B, size, size, 3))
  logsnr = jax.random.uniform(kl, (B,), minval=-20., maxval=20.)
  y = jax.random.randint(ky, (B,), 0, max(num_classes, 1))
  return x, logsnr, y


def param_shapes(model, inputs):
  """The params tree as ShapeDtypeStructs: traces init, computes nothing."""
  return jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), *inputs, train=False)
  )['params']


def random_params(model, inputs, seed=1):
  """Random, roughly fan-in scaled params, made with numpy.

  Running flax's initializers costs tens of seconds of XLA compilation on a
  small CPU, and at init the zero-initialized layers hide most of the network
  anyway. Tests that apply the model use these instead.
  """
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    if name == 'kernel':
      fan_in = int(np.prod(leaf.shape)) // leaf.shape[-1]
      return jnp.asarray(noise / np.sqrt(fan_in))
    if name == 'scale':
      return jnp.asarray(1. + 0.1 * noise)
    return jnp.asarray(0.1 * noise)

  return jax.tree_util.tree_map_with_path(fill, param_shapes(model, inputs))


def init_subtree(model, inputs, select):
  """`select(params)` from the real flax init, under jit.

  XLA drops the initializers of everything not selected, so this is cheap.
  """
  init = lambda key: select(model.init(key, *inputs, train=False)['params'])
  return quick_jit(init)(jax.random.PRNGKey(0))


@functools.lru_cache(maxsize=None)
def jitted_apply(model, train):
  """model.apply under quick_jit, compiled once per (model, train)."""
  return quick_jit(lambda params, inputs, key: model.apply(
      {'params': params}, *inputs, train=train, rngs={'dropout': key}))


def run(model, params, inputs, *, train=False, seed=0):
  return jitted_apply(model, train)(params, inputs, jax.random.PRNGKey(seed))


def param_count(params):
  return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))


@pytest.fixture(scope='module')
def tiny():
  """(model, inputs, random params) shared by tests that only apply."""
  model = unet.UNet(**TINY)
  inputs = make_inputs()
  return model, inputs, random_params(model, inputs)


# --- Shapes and configuration variants --------------------------------------


# Between them the cases cover conditional and unconditional models, both
# resampling styles and every logSNR input type; the first is the shared tiny
# model, already compiled for other tests.
@pytest.mark.parametrize('overrides', [
    dict(),
    dict(num_classes=10, resblock_resample=True, logsnr_input_type='linear',
         out_ch=6),
    dict(MINIMAL, num_classes=10, logsnr_input_type='sigmoid'),
], ids=['uncond-conv-resample-inv_cos', 'cond-resblock-resample-linear',
        'cond-minimal-sigmoid'])
def test_output_shape(overrides):
  cfg = {**TINY, **overrides}
  model = unet.UNet(**cfg)
  inputs = make_inputs(cfg['num_classes'])
  params = random_params(model, inputs)
  assert ('class_emb' in params) == (cfg['num_classes'] > 1)
  out = run(model, params, inputs)
  assert out.shape == (B, SIZE, SIZE, cfg['out_ch'])
  assert out.dtype == jnp.float32
  assert np.all(np.isfinite(out)) and np.any(out != 0.)


def test_zero_init_layers(tiny):
  """conv_out and every residual branch's last layer start at exactly zero.

  So at init each block is the identity and the network predicts zero.
  """
  model, inputs, params = tiny

  def zero_init_layers(p):
    return {k: v for k, v in p.items()
            if k == 'conv_out' or '.attn_' in k or '.block_' in k}

  def last_layers(p):
    out = {'conv_out': p['conv_out']}
    for name, sub in zero_init_layers(p).items():
      if name != 'conv_out':
        out[name] = sub['proj_out' if 'proj_out' in sub else 'conv2']
    return out

  initial, conv1 = init_subtree(
      model, inputs, lambda p: (last_layers(p), p['mid.block_1']['conv1']))
  for name, leaf in jax.tree_util.tree_leaves_with_path(initial):
    np.testing.assert_array_equal(leaf, 0., err_msg=jax.tree_util.keystr(name))
  assert np.any(conv1['kernel'] != 0.)  # the others are not zero-initialized

  params = {**params, 'conv_out': initial['conv_out']}
  out = run(model, params, inputs)
  np.testing.assert_array_equal(out, 0.)


def test_logsnr_inputs_land_in_unit_interval():
  logsnr = jnp.array([-20., -10., 0., 10., 20.])
  for input_type in unet.LOGSNR_INPUT_TYPES:
    v = unet.logsnr_to_input(logsnr, input_type, (-10., 10.))
    assert np.all((v >= -1.) & (v <= 2.)), input_type
  # inv_cos inverts the cosine schedule: logsnr 0 is the midpoint t=0.5, and
  # high logsnr (clean) is t near 0.
  v = unet.logsnr_to_input(logsnr, 'inv_cos', (-10., 10.))
  np.testing.assert_allclose(v[2], 0.5, rtol=1e-6)
  assert v[-1] < 1e-4 and v[0] > 1 - 1e-4


def test_unknown_logsnr_input_type_is_named(tiny):
  model, inputs, params = tiny
  with pytest.raises(ValueError, match='bogus'):
    model.clone(logsnr_input_type='bogus').apply(
        {'params': params}, *inputs, train=False)


def test_lists_and_head_dim_accepted(tiny):
  """Configs from ml_collections give lists; head_dim can replace num_heads."""
  model, inputs, params = tiny
  model = model.clone(ch_mult=[1, 2], attn_resolutions=[4], num_heads=None,
                      head_dim=32, logsnr_scale_range=[-10., 10.])
  # Stored as tuples, so the module stays hashable (jit static arguments).
  assert model.ch_mult == (1, 2) and model.attn_resolutions == (4,)
  hash(model)
  # head_dim=32 on 32 or 64 channels: one or two heads, same param shapes.
  shapes = lambda p: jax.tree_util.tree_map(lambda a: a.shape, p)
  assert shapes(param_shapes(model, inputs)) == shapes(params)
  assert unet.attention_heads(64, None, 32) == (2, 32)
  assert unet.attention_heads(64, 4, None) == (4, 16)
  with pytest.raises(ValueError, match='exactly one'):
    unet.attention_heads(64, 2, 32)


def test_timestep_embedding():
  emb = unet.timestep_embedding(jnp.array([0., 0.5]), 7, max_time=1.)
  assert emb.shape == (2, 7)
  # At t=0: sin half is 0, cos half is 1, the odd dimension is zero padding.
  np.testing.assert_allclose(emb[0], [0, 0, 0, 1, 1, 1, 0])
  np.testing.assert_allclose(emb[1, -1], 0.)


# --- Input validation ------------------------------------------------------


def test_shape_errors(tiny):
  model, (x, logsnr, y), params = tiny
  apply = lambda *a, m=model: m.apply({'params': params}, *a, train=False)
  with pytest.raises(ValueError, match='logsnr'):
    apply(x, logsnr[:1], y)
  with pytest.raises(ValueError, match='NHWC'):
    apply(x[0], logsnr, y)
  with pytest.raises(ValueError, match='square'):
    apply(x[:, :, :4], logsnr, y)
  with pytest.raises(ValueError, match='divisible'):
    apply(x[:, :7, :7], logsnr, y)
  conditional = model.clone(num_classes=10)
  with pytest.raises(ValueError, match='labels'):
    apply(x, logsnr, y[:1], m=conditional)
  with pytest.raises(ValueError, match='integers'):
    apply(x, logsnr, y.astype(jnp.float32), m=conditional)
  with pytest.raises(ValueError, match='multiples of 32'):
    apply(x, logsnr, y, m=model.clone(ch=48))


# --- Dropout and precision -------------------------------------------------


def test_dropout_only_in_train_mode(tiny):
  model, inputs, params = tiny
  go = lambda train, seed: run(model, params, inputs, train=train, seed=seed)
  eval_a, eval_b = go(False, 0), go(False, 1)
  np.testing.assert_array_equal(eval_a, eval_b)
  train_a, train_b = go(True, 0), go(True, 1)
  assert not np.allclose(train_a, eval_a)
  assert not np.allclose(train_a, train_b)
  np.testing.assert_array_equal(train_a, go(True, 0))


def test_remat_policies_are_jax_checkpoint_policies():
  for policy in choices.REMAT_POLICIES:
    assert callable(getattr(jax.checkpoint_policies, policy)), policy


def test_remat_keeps_parameters_values_and_gradients(tiny):
  """The same parameter tree, and (train mode: dropout on, same masks) the
  same output and gradients up to float rounding. The default policy only
  (nothing saved): the others differ only in what XLA keeps, and each
  compile costs ~20 s here."""
  model, inputs, params = tiny
  remat = model.clone(remat=True)
  assert jax.tree.structure(param_shapes(remat, inputs)) == jax.tree.structure(
      params)

  def loss_and_grads(m):
    loss = lambda p: jnp.mean(m.apply({'params': p}, *inputs, train=True,
                                      rngs={'dropout': jax.random.PRNGKey(4)})
                              ** 2)
    return quick_jit(jax.value_and_grad(loss))(params)

  (loss, grads), (loss_r, grads_r) = loss_and_grads(model), loss_and_grads(
      remat)
  np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
  for g, g_r in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_r)):
    np.testing.assert_allclose(g_r, g, rtol=1e-4, atol=1e-6)


def test_dtype_names():
  for name in ('bfloat16', jnp.bfloat16, np.dtype(jnp.bfloat16)):
    assert unet.canonical_dtype(name) == jnp.bfloat16
  assert unet.canonical_dtype('float32') == jnp.float32
  with pytest.raises(ValueError, match='dtype'):
    unet.canonical_dtype('bogus')


def test_bfloat16_compute(tiny):
  """dtype given by name, as configs do; the output is still float32."""
  model, inputs, params = tiny
  ref = run(model, params, inputs)
  out = run(model.clone(dtype='bfloat16'), params, inputs)
  assert out.dtype == jnp.float32
  scale = float(jnp.abs(ref).max())
  assert scale > 0.1
  np.testing.assert_allclose(out, ref, atol=0.05 * scale)
  assert not np.array_equal(out, ref)  # bfloat16 was really used


def test_params_float32_under_bfloat16(tiny):
  model, inputs, _ = tiny
  params = param_shapes(model.clone(dtype='bfloat16'), inputs)
  assert {p.dtype for p in jax.tree_util.tree_leaves(params)} == {
      jnp.dtype(jnp.float32)}


# --- Parameter tree and count -----------------------------------------------


@pytest.fixture(scope='module')
def cifar10_params():
  """Parameter shapes of the CIFAR-10 model, without allocating them."""
  inputs = (jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,)),
            jnp.zeros((1,), jnp.int32))
  return param_shapes(unet.UNet(**CIFAR10), inputs)


def test_official_module_names(cifar10_params):
  """Names and shapes that official checkpoints are keyed on."""
  p = cifar10_params
  expected = {
      ('dense0', 'kernel'): (256, 1024),
      ('dense1', 'kernel'): (1024, 1024),
      ('conv_in', 'kernel'): (3, 3, 3, 256),
      ('down_0.block_0', 'norm1', 'scale'): (256,),
      ('down_0.block_0', 'conv1', 'kernel'): (3, 3, 256, 256),
      ('down_0.block_0', 'temb_proj', 'kernel'): (1024, 512),
      ('down_0.block_0', 'norm2', 'bias'): (256,),
      ('down_0.block_0', 'conv2', 'kernel'): (3, 3, 256, 256),
      ('down_0.downsample', 'conv1', 'kernel'): (3, 3, 256, 256),
      ('down_1.attn_2', 'norm', 'scale'): (256,),
      ('down_1.attn_2', 'q', 'kernel'): (256, 1, 256),
      ('down_1.attn_2', 'k', 'bias'): (1, 256),
      ('down_1.attn_2', 'v', 'kernel'): (256, 1, 256),
      ('down_1.attn_2', 'proj_out', 'kernel'): (1, 256, 256),
      ('mid.block_1', 'conv1', 'kernel'): (3, 3, 256, 256),
      ('mid.attn_1', 'proj_out', 'bias'): (256,),
      ('mid.block_2', 'conv2', 'bias'): (256,),
      ('up_2.block_0', 'nin_shortcut', 'kernel'): (512, 256),
      ('up_2.attn_3', 'q', 'kernel'): (256, 1, 256),
      ('up_1.upsample', 'temb_proj', 'bias'): (512,),
      ('norm_out', 'scale'): (256,),
      ('conv_out', 'kernel'): (3, 3, 256, 3),
  }
  for path, shape in expected.items():
    node = p
    for key in path:
      assert key in node, f'missing {"/".join(path)}'
      node = node[key]
    assert node.shape == shape, path
  # Attention at 16 and 8 only: none at 32 (level 0), none in level-0 blocks.
  assert not any(k.startswith('down_0.attn') for k in p)
  assert not any(k.startswith('up_0.attn') for k in p)
  assert 'class_emb' not in p
  assert 'up_0.upsample' not in p and 'down_2.downsample' not in p


def official_param_count(*, ch, emb_ch, ch_mult, num_res_blocks,
                         attn_resolutions, resblock_resample, num_classes,
                         out_ch, in_ch, resolution, **_):
  """Counts the official UNet's parameters from its description alone.

  Independent of unet.py: it walks the architecture on paper, tracking the
  channel count and the stack of skip connections.
  """
  conv = lambda i, o: 9 * i * o + o  # 3x3 kernel + bias
  dense = lambda i, o: i * o + o
  norm = lambda c: 2 * c  # GroupNorm scale + bias
  attn = lambda c: norm(c) + 4 * dense(c, c)  # q, k, v, proj_out

  def resblock(i, o):
    n = norm(i) + conv(i, o) + dense(emb_ch, 2 * o) + norm(o) + conv(o, o)
    return n + (dense(i, o) if i != o else 0)

  resample = lambda c: resblock(c, c) if resblock_resample else conv(c, c)

  total = dense(ch, emb_ch) + dense(emb_ch, emb_ch)
  if num_classes > 1:
    total += dense(num_classes, emb_ch)
  total += conv(in_ch, ch)
  c, res, skips = ch, resolution, [ch]
  for level, mult in enumerate(ch_mult):
    for _ in range(num_res_blocks):
      total += resblock(c, ch * mult)
      c = ch * mult
      total += attn(c) if res in attn_resolutions else 0
      skips.append(c)
    if level != len(ch_mult) - 1:
      total += resample(c)
      res //= 2
      skips.append(c)
  total += 2 * resblock(c, c) + attn(c)
  for level in reversed(range(len(ch_mult))):
    for _ in range(num_res_blocks + 1):
      total += resblock(c + skips.pop(), ch * ch_mult[level])
      c = ch * ch_mult[level]
      total += attn(c) if res in attn_resolutions else 0
    if level != 0:
      total += resample(c)
      res *= 2
  assert not skips
  return total + norm(c) + conv(c, out_ch)


def test_cifar10_param_count(cifar10_params):
  expected = official_param_count(**CIFAR10, in_ch=3, resolution=32)
  assert expected == CIFAR10_PARAM_COUNT
  assert param_count(cifar10_params) == expected


@pytest.mark.parametrize('overrides', [
    dict(),
    dict(num_classes=10, resblock_resample=True),
    dict(ch_mult=(1, 2, 2), attn_resolutions=(8, 2), num_res_blocks=2),
])
def test_tiny_param_counts(overrides):
  cfg = {**TINY, **overrides}
  model = unet.UNet(**cfg)
  inputs = make_inputs(cfg['num_classes'])
  assert param_count(param_shapes(model, inputs)) == official_param_count(
      **cfg, in_ch=3, resolution=SIZE)
