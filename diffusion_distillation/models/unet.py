"""The UNet denoiser of Progressive Distillation (Salimans & Ho, 2022).

The architecture is that of the official google-research release (itself close
to Improved DDPM): ResNet blocks conditioned on a logSNR embedding through a
scale/shift of their second GroupNorm, self-attention at chosen resolutions and
a mirrored up path fed by skip connections.

Module names and parameter shapes follow the official code one to one, so that a
parameter tree saved by the official model loads into this one unchanged; with
`w_input_type` and `extra_class` they are those of the guided-distillation
authors' `w_unet3.UNet` (google-research `ddpm_w_distillation`). Keep them that
way: renaming a submodule breaks checkpoint compatibility.

Mixed precision: `dtype` is the computation dtype only. Parameters are always
float32, GroupNorm statistics are reduced in float32, and the last layers
(`norm_out`, `conv_out`) run in float32 so the returned prediction is float32
whatever `dtype` is.
"""

from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_distillation.config.choices import LOGSNR_INPUT_TYPES
from diffusion_distillation.parallel import microbatches

PARAM_DTYPE = jnp.float32

nonlinearity = nn.swish


def canonical_dtype(dtype: Any) -> jnp.dtype:
  """Turns 'bfloat16', jnp.bfloat16 or np.dtype('bfloat16') into one form.

  Configs hold dtypes as strings; modules want a real dtype.
  """
  try:
    return jnp.dtype(dtype)
  except TypeError as e:
    raise ValueError(f'not a dtype: {dtype!r}') from e


def group_norm(name: str, dtype: Any) -> nn.GroupNorm:
  """GroupNorm with 32 groups (flax default, as official).

  Statistics are always reduced in float32 so that bfloat16 compute does not
  lose precision in the mean/variance; `dtype` only sets the output dtype.
  """
  return nn.GroupNorm(
      num_groups=32,
      dtype=dtype,
      param_dtype=PARAM_DTYPE,
      force_float32_reductions=True,
      name=name)


def conv3x3(features: int, name: str, dtype: Any, *, strides: int = 1,
            zero_init: bool = False) -> nn.Conv:
  """The 3x3 'SAME' convolution used everywhere in the network.

  `zero_init` makes a residual branch (or the output) start as exactly zero, so
  every block is the identity at initialization.
  """
  kwargs = dict(kernel_init=nn.initializers.zeros) if zero_init else {}
  return nn.Conv(
      features=features,
      kernel_size=(3, 3),
      strides=(strides, strides),
      dtype=dtype,
      param_dtype=PARAM_DTYPE,
      name=name,
      **kwargs)


def dense(features: int, name: str, dtype: Any) -> nn.Dense:
  return nn.Dense(
      features=features, dtype=dtype, param_dtype=PARAM_DTYPE, name=name)


def timestep_embedding(timesteps: jnp.ndarray, embedding_dim: int,
                       max_time: float = 1000.) -> jnp.ndarray:
  """Sinusoidal embedding of shape (B, embedding_dim), computed in float32.

  This is the tensor2tensor / Fairseq variant (sin half then cos half, with
  frequencies spaced by log(10000) / (half_dim - 1)), which is what the
  official checkpoints were trained with; the 'Attention Is All You Need'
  variant differs slightly. Inputs are rescaled so that `max_time` maps to
  1000, so that the frequencies suit a [0, max_time] input range.
  """
  if timesteps.ndim != 1:
    raise ValueError(
        f'timesteps must have shape (B,), got {timesteps.shape}')
  half_dim = embedding_dim // 2
  if half_dim < 2:
    raise ValueError(f'embedding_dim must be >= 4, got {embedding_dim}')
  t = timesteps.astype(jnp.float32) * (1000. / max_time)
  freqs = jnp.exp(
      jnp.arange(half_dim, dtype=jnp.float32)
      * -(np.log(10000.) / (half_dim - 1)))
  args = t[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=1)
  if embedding_dim % 2 == 1:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def logsnr_to_input(logsnr: jnp.ndarray, input_type: str,
                    scale_range: Sequence[float]) -> jnp.ndarray:
  """Maps logSNR to a bounded scalar that the sinusoidal embedding expects.

  The embedding is built for inputs in about [0, 1]; each choice squashes the
  unbounded logSNR there differently. 'inv_cos' inverts the cosine schedule, so
  it gives back the schedule's time t in [0, 1] (the paper's choice).
  """
  logsnr = logsnr.astype(jnp.float32)
  if input_type == 'linear':
    lo, hi = scale_range
    return (logsnr - lo) / (hi - lo)
  if input_type == 'sigmoid':
    return nn.sigmoid(logsnr)
  if input_type == 'inv_cos':
    clipped = jnp.clip(logsnr, -20., 20.)
    return jnp.arctan(jnp.exp(-0.5 * clipped)) / (0.5 * jnp.pi)
  raise ValueError(
      f'unknown logsnr_input_type {input_type!r}; known: '
      f'{list(LOGSNR_INPUT_TYPES)}')


def nearest_neighbor_upsample(x: jnp.ndarray) -> jnp.ndarray:
  """Doubles H and W of an NHWC array by repeating each pixel 2x2."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def avg_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


_RESAMPLERS = {
    None: lambda z: z,
    'up': nearest_neighbor_upsample,
    'down': avg_pool_2x2,
}


class Dropout(nn.Module):
  """`nn.Dropout` (the same mask from the same rng) that, given a microbatch,
  applies its rows of the whole batch's mask (`parallel/microbatches.py`), so
  that gradient accumulation drops what the full batch would."""

  rate: float

  @nn.compact
  def __call__(self, x, deterministic: bool, microbatch=None):
    if self.rate == 0. or deterministic:
      return x
    if self.rate == 1.:  # as nn.Dropout: no division by zero
      return jnp.zeros_like(x)
    keep = 1. - self.rate
    mask = microbatches.draw(jax.random.bernoulli, self.make_rng('dropout'),
                             x.shape, microbatch, p=keep)
    return jax.lax.select(mask, x / keep, jnp.zeros_like(x))


class ResnetBlock(nn.Module):
  """Pre-activation residual block conditioned on an embedding.

  The embedding enters as a per-channel scale and shift of the second
  GroupNorm (as official, rather than the additive DDPM conditioning). With
  `resample`, both branches are resampled right after the first activation, so
  the block doubles as an up- or down-sampling layer.
  """

  dropout: float
  out_ch: Optional[int] = None
  resample: Optional[str] = None  # None, 'up' or 'down'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, emb, deterministic: bool, microbatch=None):
    if self.resample not in _RESAMPLERS:
      raise ValueError(
          f'resample must be None, "up" or "down", got {self.resample!r}')
    in_ch = x.shape[-1]
    out_ch = in_ch if self.out_ch is None else self.out_ch
    resample = _RESAMPLERS[self.resample]

    h = nonlinearity(group_norm('norm1', self.dtype)(x))
    h, x = resample(h), resample(x)
    h = conv3x3(out_ch, 'conv1', self.dtype)(h)

    scale, shift = self._scale_shift(emb, out_ch)
    h = group_norm('norm2', self.dtype)(h) * (1 + scale) + shift
    h = nonlinearity(h)
    h = Dropout(self.dropout, name='Dropout_0')(h, deterministic, microbatch)
    h = conv3x3(out_ch, 'conv2', self.dtype, zero_init=True)(h)

    if in_ch != out_ch:
      # A 1x1 projection (a Dense on the channel axis, as official).
      x = dense(out_ch, 'nin_shortcut', self.dtype)(x)
    return x + h

  def _scale_shift(self, emb, out_ch):
    """Per-channel (scale, shift), each of shape (B, 1, 1, out_ch)."""
    out = dense(2 * out_ch, 'temb_proj', self.dtype)(nonlinearity(emb))
    scale, shift = jnp.split(out[:, None, None, :], 2, axis=-1)
    return scale, shift


def attention_heads(channels: int, num_heads: Optional[int],
                    head_dim: Optional[int]) -> Tuple[int, int]:
  """Resolves (num_heads, head_dim) from exactly one of the two."""
  if (num_heads is None) == (head_dim is None):
    raise ValueError(
        'give exactly one of num_heads and head_dim, got '
        f'num_heads={num_heads}, head_dim={head_dim}')
  split = num_heads if head_dim is None else head_dim
  if channels % split:
    raise ValueError(
        f'{channels} channels do not split into '
        f'{"num_heads" if head_dim is None else "head_dim"}={split}')
  if head_dim is None:
    return num_heads, channels // num_heads
  return channels // head_dim, head_dim


class AttnBlock(nn.Module):
  """Residual multi-head self-attention over all H*W positions.

  q, k, v and proj_out are DenseGeneral layers whose kernels keep the head axis
  separate ((C, heads, head_dim) and (heads, head_dim, C)), matching the
  official parameter shapes.
  """

  num_heads: Optional[int]
  head_dim: Optional[int] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, height, width, c = x.shape
    num_heads, head_dim = attention_heads(c, self.num_heads, self.head_dim)

    h = group_norm('norm', self.dtype)(x).reshape(b, height * width, c)
    q, k, v = (self._project(name, num_heads, head_dim)(h)
               for name in ('q', 'k', 'v'))
    # Softmax in float32 even under bfloat16 compute: long rows of logits
    # are where low precision hurts most.
    h = nn.dot_product_attention(
        q, k, v, dtype=self.dtype, force_fp32_for_softmax=True)
    h = nn.DenseGeneral(
        features=c,
        axis=(-2, -1),
        kernel_init=nn.initializers.zeros,
        dtype=self.dtype,
        param_dtype=PARAM_DTYPE,
        name='proj_out')(h)
    return x + h.reshape(b, height, width, c)

  def _project(self, name, num_heads, head_dim):
    return nn.DenseGeneral(
        features=(num_heads, head_dim),
        dtype=self.dtype,
        param_dtype=PARAM_DTYPE,
        name=name)


class UNet(nn.Module):
  """UNet denoiser: (x_t, logsnr, y) -> prediction with out_ch channels.

  Attributes:
    num_classes: 1 for unconditional; > 1 adds a learned class embedding and
      then `y` must hold int labels of shape (B,).
    out_ch: output channels (e.g. 3 for an 'x' or 'eps' mean, 6 when a
      variance is predicted too).
    ch: base channel count; must be a multiple of 32 (GroupNorm groups).
    emb_ch: width of the logSNR/class embedding.
    ch_mult: channel multiplier per resolution level (tuple or list).
    num_res_blocks: ResNet blocks per level on the down path (+1 on the up
      path).
    attn_resolutions: spatial sizes (H) at which attention follows each block.
    num_heads: attention heads; alternatively give `head_dim` and set this to
      None.
    dropout: dropout rate inside ResNet blocks, active only when train=True
      (needs the 'dropout' rng).
    logsnr_input_type: 'linear', 'sigmoid' or 'inv_cos'.
    logsnr_scale_range: (min, max) logSNR mapped to [0, 1] by 'linear'.
    resblock_resample: resample with ResNet blocks instead of convolutions.
    head_dim: per-head width, alternative to num_heads.
    dtype: computation dtype, a dtype or its name ('float32', 'bfloat16').
      Parameters stay float32 and the output is float32 regardless.
    w_input_type: None (no `w` input, no w layers: the official parameter
      tree, and a guided teacher's), or how a w-conditioned student of guided
      distillation (Meng et al., 2023) maps its guidance strength `w` into
      [0, 1] before the sinusoidal embedding: 'inv_cos', 'linear' (over
      `w_scale_range`) or 'sigmoid', the formulas of `logsnr_input_type`, as
      the authors' `w_unet3.UNet`. Then `w_dense0` and `w_dense1` (default
      init, swish between) embed it, and `w_warmup` times that embedding is
      added to the logSNR embedding.
    w_scale_range: (min, max) w mapped to [0, 1] by 'linear'.
    extra_class: labels are shifted by one, so that `class_emb` has
      num_classes + 1 rows and y = -1 (row 0) means "no class": the
      unconditional input of classifier-free guidance (the authors'
      `extra_class` / `uncond_prob` != 0).
    remat, remat_policy: rematerialize every residual and attention block
      (`_rematerialized`), keeping what the jax.checkpoint_policies name
      `remat_policy` saves (config/choices.py REMAT_POLICIES).
  """

  num_classes: int
  out_ch: int
  ch: int
  emb_ch: int
  ch_mult: Sequence[int]
  num_res_blocks: int
  attn_resolutions: Sequence[int]
  num_heads: Optional[int]
  dropout: float
  logsnr_input_type: str
  logsnr_scale_range: Sequence[float] = (-10., 10.)
  resblock_resample: bool = False
  head_dim: Optional[int] = None
  dtype: Any = jnp.float32
  w_input_type: Optional[str] = None
  w_scale_range: Sequence[float] = (-10., 10.)
  extra_class: bool = False
  remat: bool = False
  remat_policy: str = 'nothing_saveable'  # choices.REMAT_POLICIES

  def __post_init__(self):
    # Configs (ml_collections) hand over lists and dtype names. Store tuples
    # and a real dtype so that the module stays hashable (jit static args,
    # lifted transforms) and equal to one built from tuples.
    for name in ('ch_mult', 'attn_resolutions', 'logsnr_scale_range',
                 'w_scale_range'):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    object.__setattr__(self, 'dtype', canonical_dtype(self.dtype))
    super().__post_init__()

  @nn.compact
  def __call__(self, x, logsnr, y, *, train: bool, w=None, w_warmup=1.,
               microbatch=None):
    self._check_config()
    self._check_inputs(x, logsnr, y)
    dtype = self.dtype
    emb = self._embedding(logsnr, y, w, w_warmup, dtype)
    block = self._block_fn(emb, train, microbatch, dtype)
    attn = self._rematerialized(AttnBlock)

    def maybe_attend(h, name):
      if h.shape[1] not in self.attn_resolutions:
        return h
      return attn(self.num_heads, self.head_dim, dtype=dtype, name=name)(h)

    # Down path: every block output is kept as a skip connection.
    hs = [conv3x3(self.ch, 'conv_in', dtype)(x.astype(dtype))]
    last_level = len(self.ch_mult) - 1
    for level, mult in enumerate(self.ch_mult):
      for i in range(self.num_res_blocks):
        h = block(hs[-1], f'down_{level}.block_{i}', self.ch * mult)
        hs.append(maybe_attend(h, f'down_{level}.attn_{i}'))
      if level != last_level:
        hs.append(self._downsample(hs[-1], f'down_{level}.downsample', block,
                                   dtype))

    h = block(hs[-1], 'mid.block_1')
    h = attn(self.num_heads, self.head_dim, dtype=dtype, name='mid.attn_1')(h)
    h = block(h, 'mid.block_2')

    # Up path: one more block per level than going down, so that every skip
    # (including the downsample outputs and conv_in) is consumed once.
    for level in reversed(range(len(self.ch_mult))):
      for i in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, hs.pop()], axis=-1)
        h = block(h, f'up_{level}.block_{i}', self.ch * self.ch_mult[level])
        h = maybe_attend(h, f'up_{level}.attn_{i}')
      if level != 0:
        h = self._upsample(h, f'up_{level}.upsample', block, dtype)
    assert not hs, 'unconsumed skip connections'

    return self._head(h)

  def _head(self, h):
    """norm_out -> swish -> zero-init conv_out, in float32.

    Run in float32 so the prediction (and the loss computed on it) keeps full
    precision; the cost is a single layer.
    """
    h = nonlinearity(group_norm('norm_out', jnp.float32)(h))
    h = conv3x3(self.out_ch, 'conv_out', jnp.float32, zero_init=True)(h)
    return h.astype(jnp.float32)

  def _embedding(self, logsnr, y, w, w_warmup, dtype):
    """Embedding (B, emb_ch): logSNR's, plus `w_warmup` times w's (if `w`
    is given), plus the class's (if any), summed in the authors' order."""
    logsnr_input = logsnr_to_input(logsnr, self.logsnr_input_type,
                                   self.logsnr_scale_range)
    emb = timestep_embedding(logsnr_input, self.ch, max_time=1.)
    emb = dense(self.emb_ch, 'dense0', dtype)(emb.astype(dtype))
    emb = dense(self.emb_ch, 'dense1', dtype)(nonlinearity(emb))
    if w is not None:
      emb = emb + self._w_embedding(w, logsnr.shape[0], dtype) * jnp.asarray(
          w_warmup, dtype)
    if self.num_classes > 1:
      rows = self.num_classes + int(self.extra_class)
      y_onehot = jax.nn.one_hot(y + int(self.extra_class), rows, dtype=dtype)
      emb = emb + dense(self.emb_ch, 'class_emb', dtype)(y_onehot)
    return emb

  def _w_embedding(self, w, batch: int, dtype):
    """Embedding (B, emb_ch) of the guidance strength `w` (shape (B,)).

    As the authors' `w_unet3`: w through `w_input_type` into [0, 1], the
    sinusoids of the logSNR embedding, `w_dense0`, swish, `w_dense1`.
    """
    if self.w_input_type is None:
      raise ValueError('this UNet takes no w input (w_input_type = None)')
    if w.shape != (batch,):
      raise ValueError(f'w must have shape (B,) = ({batch},), got {w.shape}')
    w_input = logsnr_to_input(w, self.w_input_type, self.w_scale_range)
    emb = timestep_embedding(w_input, self.ch, max_time=1.)
    emb = dense(self.emb_ch, 'w_dense0', dtype)(emb.astype(dtype))
    return dense(self.emb_ch, 'w_dense1', dtype)(nonlinearity(emb))

  def _block_fn(self, emb, train, microbatch, dtype):
    """Returns `block(h, name, out_ch=None, resample=None)` -> ResnetBlock."""

    cls = self._rematerialized(ResnetBlock, static_argnums=(3,))

    def block(h, name, out_ch=None, resample=None):
      return cls(dropout=self.dropout, out_ch=out_ch, resample=resample,
                 dtype=dtype, name=name)(h, emb, not train, microbatch)

    return block

  def _rematerialized(self, cls, static_argnums=()):
    """`cls`, or with `remat` its activations recomputed in the backward
    pass (`nn.remat`, keeping what `remat_policy` saves): less memory, the
    same parameters and, up to float rounding, the same values and
    gradients. `static_argnums` count `self` as 0."""
    if not self.remat:
      return cls
    return nn.remat(cls, static_argnums=static_argnums,
                    policy=getattr(jax.checkpoint_policies, self.remat_policy))

  def _downsample(self, h, name, block, dtype):
    if self.resblock_resample:
      return block(h, name, resample='down')
    return conv3x3(h.shape[-1], name, dtype, strides=2)(h)

  def _upsample(self, h, name, block, dtype):
    if self.resblock_resample:
      return block(h, name, resample='up')
    return conv3x3(h.shape[-1], name, dtype)(nearest_neighbor_upsample(h))

  def _check_config(self):
    if self.num_classes < 1:
      raise ValueError(f'num_classes must be >= 1, got {self.num_classes}')
    for name, value, allowed in (
        ('logsnr_input_type', self.logsnr_input_type, LOGSNR_INPUT_TYPES),
        ('w_input_type', self.w_input_type, (None, *LOGSNR_INPUT_TYPES))):
      if value not in allowed:
        raise ValueError(f'unknown {name} {value!r}; known: '
                         f'{list(LOGSNR_INPUT_TYPES)}')
    if not self.ch_mult:
      raise ValueError('ch_mult must not be empty')
    bad = [self.ch * m for m in self.ch_mult if (self.ch * m) % 32]
    if bad:
      raise ValueError(
          f'channel counts {bad} (ch={self.ch} x ch_mult={list(self.ch_mult)}) '
          'must be multiples of 32, the GroupNorm group count')

  def _check_inputs(self, x, logsnr, y):
    if x.ndim != 4:
      raise ValueError(f'x must be NHWC with shape (B, H, W, C), got {x.shape}')
    b, height, width, _ = x.shape
    if height != width:
      raise ValueError(f'x must be square, got H={height}, W={width}')
    factor = 2 ** (len(self.ch_mult) - 1)
    if height % factor:
      raise ValueError(
          f'image size {height} must be divisible by {factor} for '
          f'{len(self.ch_mult)} resolution levels')
    if logsnr.shape != (b,):
      raise ValueError(
          f'logsnr must have shape (B,) = ({b},), got {logsnr.shape}')
    if self.num_classes > 1:
      if y is None or y.shape != (b,):
        raise ValueError(
            f'class-conditional UNet needs int labels y of shape ({b},), got '
            f'{None if y is None else y.shape}')
      if not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(f'labels y must be integers, got dtype {y.dtype}')
