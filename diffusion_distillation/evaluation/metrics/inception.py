"""The standard FID/IS Inception network as a Flax module, with its weights.

The reference FID and Inception Score code (TTUR, TF-GAN, openai/improved-gan,
pytorch-fid) all use one specific network: the 2015-12-05 Inception-v3 graph
`classify_image_graph_def.pb` from

  http://download.tensorflow.org/models/image/imagenet/inception-2015-12-05.tgz

It differs from later Inception-v3 releases (slim, Keras, torchvision), so using
any other weights gives numbers that cannot be compared with the literature.
This module re-implements that graph op by op and reads its weights from the
`.pb` itself (parsed with the `tensorboard` package's copy of TensorFlow's
protos, so no TensorFlow is needed) or from an `.npz` written by `convert`
(only the tensors the network needs: smaller and faster to read). Quirks of the graph that are reproduced here (documented by
pytorch-fid's FIDInceptionA/C/E_1/E_2 and torch-fidelity):

* Input: images with values in [0, 255] are bilinearly resized to 299x299 by
  TF1's legacy `ResizeBilinear` (align_corners=False, no half-pixel centers),
  then mapped to [-1, 1) as `(x - 128) / 128` (graph ops `Sub`, `Mul`).
* Every conv is followed by `BatchNormWithGlobalNormalization` (moving
  statistics, epsilon and `scale_after_normalization` read from the graph)
  and ReLU; convs have no bias.
* The average pools inside mixed blocks (3x3, stride 1, SAME) exclude the
  padding from the average (TF semantics), and the last block `mixed_10`
  uses a max pool there instead of an average pool.
* `pool_3` averages the final 8x8 map to the 2048-d FID features; `softmax`
  is a 2048 x 1008 linear layer (1008 classes, of which 1000 are ImageNet).

Inception Score: openai/improved-gan's `get_inception_score` (the original IS
code) takes the weights input of `softmax/logits/MatMul` and applies softmax to
`pool_3 @ W` over all 1008 outputs, *without* `softmax/biases`. We return that
as `logits_unbiased`; `inception_score(softmax(logits_unbiased))` reproduces
published IS values (torch-fidelity and StyleGAN2-ADA do the same). `logits`
(with the bias) is the graph's own `softmax/logits` node.

Parameter names are the graph's node names: the Flax parameter tree path
`mixed_4/tower/conv_1/conv2d_params` is the graph Const of the same name.
"""

import dataclasses
import functools
import os
from typing import Any, Sequence

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_distillation.evaluation.metrics import batching
from diffusion_distillation import files

# How to turn a `.pb` into an `.npz` (no TensorFlow needed to read that).
CONVERT_COMMAND = ('python -m diffusion_distillation.inception_weights '
                   '--pb=<pb> --npz=<npz>')
INCEPTION_URL = ('http://download.tensorflow.org/models/image/imagenet/'
                 'inception-2015-12-05.tgz')
GRAPH_FILENAME = 'classify_image_graph_def.pb'
INPUT_SIZE = 299
NUM_CLASSES = 1008
FEATURE_DIM = 2048
# Used only when a file carries no BatchNormWithGlobalNormalization attributes
# (the value pytorch-fid and torch-fidelity use for this graph).
DEFAULT_BN_EPSILON = 1e-3
EPSILON_KEY = 'variance_epsilon'

_BN_OP = 'BatchNormWithGlobalNormalization'
_HIGHEST = jax.lax.Precision.HIGHEST


class InceptionWeightsError(ValueError):
  """A weights file lacks a tensor the network needs, or has the wrong shape."""


# ----------------------------------------------------------------------------
# Input handling.


def _legacy_resize_grid(in_size: int, out_size: int):
  """TF1 `ResizeBilinear` sample positions (align_corners=False, legacy).

  TF computes `scale = in / out` and `src = i * scale` in float32 and samples
  between floor(src) and min(ceil(src), in - 1); there is no half-pixel offset,
  which is why `jax.image.resize` would give different pixels.
  """
  scale = np.float32(in_size) / np.float32(out_size)
  src = np.arange(out_size, dtype=np.float32) * scale
  lower = np.floor(src)
  upper = np.minimum(np.ceil(src), in_size - 1).astype(np.int32)
  return lower.astype(np.int32), upper, (src - lower).astype(np.float32)


def resize_bilinear_tf1(images, size: int = INPUT_SIZE):
  """Resizes `[N, H, W, C]` float images to `size x size` as the graph does."""
  _, h, w, _ = images.shape
  if (h, w) == (size, size):
    return images  # scale 1: the legacy kernel is the identity
  y0, y1, dy = _legacy_resize_grid(h, size)
  x0, x1, dx = _legacy_resize_grid(w, size)
  dx = jnp.asarray(dx)[None, None, :, None]
  dy = jnp.asarray(dy)[None, :, None, None]

  def lerp_x(rows):
    left, right = rows[:, :, x0], rows[:, :, x1]
    return left + (right - left) * dx

  top, bottom = lerp_x(images[:, y0]), lerp_x(images[:, y1])
  return top + (bottom - top) * dy


def preprocess(images):
  """[N, H, W, 1 or 3] values in [0, 255] -> [N, 299, 299, 3] in [-1, 1)."""
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f'expected images [N, H, W, 1 or 3], got {images.shape}')
  x = images.astype(jnp.float32)
  if x.shape[-1] == 1:
    x = jnp.tile(x, (1, 1, 1, 3))
  x = resize_bilinear_tf1(x)
  return (x - 128.0) * (1.0 / 128.0)


# ----------------------------------------------------------------------------
# Layers. Module names follow the graph's name scopes exactly.


def _conv_name(index: int) -> str:
  return 'conv' if index == 0 else f'conv_{index}'


class BatchNorm(nn.Module):
  """`BatchNormWithGlobalNormalization` in inference mode (the graph's op)."""
  epsilon: float = DEFAULT_BN_EPSILON

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    beta = self.param('beta', nn.initializers.zeros, (c,))
    gamma = self.param('gamma', nn.initializers.ones, (c,))
    mean = self.param('moving_mean', nn.initializers.zeros, (c,))
    var = self.param('moving_variance', nn.initializers.ones, (c,))
    return (x - mean) * (jax.lax.rsqrt(var + self.epsilon) * gamma) + beta


class ConvBN(nn.Module):
  """Bias-free conv (`conv2d_params`, HWIO like TF), batchnorm, ReLU."""
  features: int
  kernel: tuple[int, int]
  stride: int = 1
  padding: str = 'SAME'
  epsilon: float = DEFAULT_BN_EPSILON

  @nn.compact
  def __call__(self, x):
    kernel = self.param('conv2d_params', nn.initializers.lecun_normal(),
                        (*self.kernel, x.shape[-1], self.features))
    y = jax.lax.conv_general_dilated(
        x, kernel, (self.stride, self.stride), self.padding,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=_HIGHEST)
    return nn.relu(BatchNorm(self.epsilon, name='batchnorm')(y))


def pool2d(x, kind: str, window: int = 3, stride: int = 1,
           padding: str = 'SAME'):
  """TF pooling: SAME average pools exclude the padding from the mean."""
  shape, strides = (window, window), (stride, stride)
  if kind == 'max':
    return nn.max_pool(x, shape, strides, padding)
  return nn.avg_pool(x, shape, strides, padding, count_include_pad=False)


class _Scoped(nn.Module):
  """Shared fields: `divisor` shrinks every width (tests only), BN epsilon."""
  divisor: int = 1
  epsilon: float = DEFAULT_BN_EPSILON

  def conv(self, features, kernel, name, stride=1, padding='SAME'):
    if features % self.divisor:
      raise ValueError(f'width {features} not divisible by {self.divisor}')
    return ConvBN(features // self.divisor, kernel, stride, padding,
                  self.epsilon, name=name)

  def tower(self, name, convs, split=(), pool=None):
    return Tower(convs=tuple(convs), split=tuple(split), pool=pool,
                 divisor=self.divisor, epsilon=self.epsilon, name=name)


class Tower(_Scoped):
  """A branch: optional 3x3 pool, convs `conv, conv_1, ...`, optional split.

  `convs` holds `(features, kernel, stride, padding)`; `split` holds
  `(features, kernel)` convs applied side by side to the chain's output
  under the scope `mixed` and concatenated (the 1x3 / 3x1 pair of mixed_9/10).
  """
  convs: Sequence[tuple] = ()
  split: Sequence[tuple] = ()
  pool: str | None = None

  @nn.compact
  def __call__(self, x):
    if self.pool is not None:
      x = pool2d(x, self.pool)
    for i, (features, kernel, stride, padding) in enumerate(self.convs):
      x = self.conv(features, kernel, _conv_name(i), stride, padding)(x)
    if self.split:
      x = Split(convs=tuple(self.split), divisor=self.divisor,
                epsilon=self.epsilon, name='mixed')(x)
    return x


class Split(_Scoped):
  """Parallel convs on one input, concatenated along channels."""
  convs: Sequence[tuple] = ()

  @nn.compact
  def __call__(self, x):
    outs = [self.conv(f, k, _conv_name(i))(x)
            for i, (f, k) in enumerate(self.convs)]
    return jnp.concatenate(outs, axis=-1)


def _c(features, kernel, stride=1, padding='SAME'):
  return (features, kernel, stride, padding)


_1x1, _3x3, _5x5 = (1, 1), (3, 3), (5, 5)
_1x7, _7x1, _1x3, _3x1 = (1, 7), (7, 1), (1, 3), (3, 1)


class InceptionA(_Scoped):
  """35x35 blocks `mixed`, `mixed_1`, `mixed_2` (torchvision Mixed_5b-d)."""
  pool_features: int = 32

  @nn.compact
  def __call__(self, x):
    return jnp.concatenate([
        self.conv(64, _1x1, 'conv')(x),
        self.tower('tower', [_c(48, _1x1), _c(64, _5x5)])(x),
        self.tower('tower_1', [_c(64, _1x1), _c(96, _3x3), _c(96, _3x3)])(x),
        self.tower('tower_2', [_c(self.pool_features, _1x1)], pool='avg')(x),
    ], axis=-1)


class InceptionB(_Scoped):
  """35x35 -> 17x17 reduction `mixed_3` (Mixed_6a)."""

  @nn.compact
  def __call__(self, x):
    return jnp.concatenate([
        self.conv(384, _3x3, 'conv', 2, 'VALID')(x),
        self.tower('tower', [_c(64, _1x1), _c(96, _3x3),
                             _c(96, _3x3, 2, 'VALID')])(x),
        pool2d(x, 'max', 3, 2, 'VALID'),
    ], axis=-1)


class InceptionC(_Scoped):
  """17x17 blocks `mixed_4` ... `mixed_7` with factorized 7x7 convs."""
  channels_7x7: int = 128

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    return jnp.concatenate([
        self.conv(192, _1x1, 'conv')(x),
        self.tower('tower', [_c(c7, _1x1), _c(c7, _1x7), _c(192, _7x1)])(x),
        self.tower('tower_1', [_c(c7, _1x1), _c(c7, _7x1), _c(c7, _1x7),
                               _c(c7, _7x1), _c(192, _1x7)])(x),
        self.tower('tower_2', [_c(192, _1x1)], pool='avg')(x),
    ], axis=-1)


class InceptionD(_Scoped):
  """17x17 -> 8x8 reduction `mixed_8` (Mixed_7a)."""

  @nn.compact
  def __call__(self, x):
    return jnp.concatenate([
        self.tower('tower', [_c(192, _1x1), _c(320, _3x3, 2, 'VALID')])(x),
        self.tower('tower_1', [_c(192, _1x1), _c(192, _1x7), _c(192, _7x1),
                               _c(192, _3x3, 2, 'VALID')])(x),
        pool2d(x, 'max', 3, 2, 'VALID'),
    ], axis=-1)


class InceptionE(_Scoped):
  """8x8 blocks `mixed_9` (avg pool branch) and `mixed_10` (max pool branch)."""
  pool: str = 'avg'

  @nn.compact
  def __call__(self, x):
    split = [(384, _1x3), (384, _3x1)]
    return jnp.concatenate([
        self.conv(320, _1x1, 'conv')(x),
        self.tower('tower', [_c(384, _1x1)], split=split)(x),
        self.tower('tower_1', [_c(448, _1x1), _c(384, _3x3)], split=split)(x),
        self.tower('tower_2', [_c(192, _1x1)], pool=self.pool)(x),
    ], axis=-1)


class Softmax(nn.Module):
  """The graph's `softmax` scope: `pool_3 @ weights (+ biases)`."""
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, pool3):
    weights = self.param('weights', nn.initializers.lecun_normal(),
                         (pool3.shape[-1], self.num_classes))
    biases = self.param('biases', nn.initializers.zeros, (self.num_classes,))
    unbiased = jnp.dot(pool3, weights, precision=_HIGHEST)
    return unbiased, unbiased + biases


class InceptionV3(_Scoped):
  """The 2015-12-05 graph. Input `[N, H, W, 1 or 3]` in [0, 255].

  Returns `dict(pool3=[N, 2048], logits=[N, 1008], logits_unbiased=[N, 1008])`
  (`2048 / divisor` features when `divisor > 1`, a test-only reduced width).
  """
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, images):
    x = preprocess(images)
    x = self.conv(32, _3x3, 'conv', 2, 'VALID')(x)
    x = self.conv(32, _3x3, 'conv_1', 1, 'VALID')(x)
    x = self.conv(64, _3x3, 'conv_2')(x)
    x = pool2d(x, 'max', 3, 2, 'VALID')  # 'pool'
    x = self.conv(80, _1x1, 'conv_3', 1, 'VALID')(x)
    x = self.conv(192, _3x3, 'conv_4', 1, 'VALID')(x)
    x = pool2d(x, 'max', 3, 2, 'VALID')  # 'pool_1'
    shared = dict(divisor=self.divisor, epsilon=self.epsilon)
    for name, pool_features in (('mixed', 32), ('mixed_1', 64),
                                ('mixed_2', 64)):
      x = InceptionA(pool_features=pool_features, name=name, **shared)(x)
    x = InceptionB(name='mixed_3', **shared)(x)
    for i, c7 in enumerate((128, 160, 160, 192)):
      x = InceptionC(channels_7x7=c7, name=f'mixed_{4 + i}', **shared)(x)
    x = InceptionD(name='mixed_8', **shared)(x)
    x = InceptionE(pool='avg', name='mixed_9', **shared)(x)
    x = InceptionE(pool='max', name='mixed_10', **shared)(x)
    pool3 = jnp.mean(x, axis=(1, 2))  # 'pool_3': 8x8 VALID average pool
    unbiased, logits = Softmax(self.num_classes, name='softmax')(pool3)
    return dict(pool3=pool3, logits=logits, logits_unbiased=unbiased)


# ----------------------------------------------------------------------------
# Weights: graph Const nodes <-> Flax parameters.


def _network_order(name: str):
  """Sort key putting graph names in network order (mixed_2 before mixed_10)."""
  key = []
  for part in name.split('/'):
    base, _, index = part.rpartition('_')
    if base and index.isdigit():
      key.append((base, int(index)))
    else:
      key.append((part, 0))
  return key


@functools.lru_cache(maxsize=None)
def _expected_shapes(divisor: int):
  module = InceptionV3(divisor=divisor)
  dummy = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  variables = jax.eval_shape(module.init, jax.random.PRNGKey(0), dummy)
  flat = traverse_util.flatten_dict(variables['params'], sep='/')
  shapes = [(name, tuple(leaf.shape)) for name, leaf in flat.items()]
  return tuple(sorted(shapes, key=lambda item: _network_order(item[0])))


def expected_shapes(divisor: int = 1) -> dict[str, tuple[int, ...]]:
  """Graph name -> shape of every tensor the network needs, in network order.

  Traced abstractly (`jax.eval_shape`), so no memory or compute is spent.
  """
  return dict(_expected_shapes(divisor))


def params_from_arrays(arrays, divisor: int = 1, source: str = 'weights'):
  """Builds the Flax parameter tree from arrays keyed by graph node name.

  Raises:
    InceptionWeightsError: naming the first (in network order) tensor that is
      missing or has the wrong shape.
  """
  flat = {}
  for name, shape in expected_shapes(divisor).items():
    if name not in arrays:
      raise InceptionWeightsError(
          f'{source}: missing tensor {name!r} (shape {shape}); is this the '
          f'2015-12-05 Inception graph {GRAPH_FILENAME}?')
    value = np.asarray(arrays[name], np.float32)
    if value.shape != shape:
      raise InceptionWeightsError(
          f'{source}: tensor {name!r} has shape {value.shape}, the network '
          f'needs {shape}')
    flat[name] = value
  return traverse_util.unflatten_dict(flat, sep='/')


def _graph_def(path):
  """Parses a binary GraphDef with TensorBoard's protos (no TensorFlow)."""
  from google.protobuf import message  # pylint: disable=g-import-not-at-top
  from tensorboard.compat.proto import graph_pb2  # pylint: disable=g-import-not-at-top
  from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top
  graph_def = graph_pb2.GraphDef()
  with open(path, 'rb') as f:
    try:
      graph_def.ParseFromString(f.read())
    except message.DecodeError as e:
      raise InceptionWeightsError(
          f'{path}: not a GraphDef ({e}); expected {GRAPH_FILENAME}') from None
  return graph_def, tensor_util.make_ndarray


def read_graph_arrays(path) -> dict[str, np.ndarray]:
  """Const tensors of a GraphDef, with batchnorm attributes folded in.

  `BatchNormWithGlobalNormalization` ignores `gamma` unless its attribute
  `scale_after_normalization` is set; where it is not, we store ones as
  `gamma`, so the arrays mean the same thing without the attribute. The op's
  `variance_epsilon` (one value for the whole graph) is stored under
  `EPSILON_KEY`.
  """
  graph_def, make_ndarray = _graph_def(path)
  arrays, epsilons = {}, set()
  for node in graph_def.node:
    if node.op == 'Const':
      arrays[node.name] = make_ndarray(node.attr['value'].tensor)
  for node in graph_def.node:
    if node.op != _BN_OP:
      continue
    epsilons.add(float(node.attr['variance_epsilon'].f))
    gamma = node.name + '/gamma'
    if not node.attr['scale_after_normalization'].b and gamma in arrays:
      arrays[gamma] = np.ones_like(arrays[gamma])
  if len(epsilons) > 1:
    raise InceptionWeightsError(f'{path}: several batchnorm epsilons '
                                f'{sorted(epsilons)}; expected one')
  arrays[EPSILON_KEY] = np.float32(epsilons.pop() if epsilons
                                   else DEFAULT_BN_EPSILON)
  return arrays


def _missing_file_message(path) -> str:
  return (
      f'Inception weights not found at {os.fspath(path)!r}. Download '
      f'{INCEPTION_URL} (the 2015-12-05 Inception-v3 graph used by TTUR, '
      f'TF-GAN, improved-gan and pytorch-fid), extract {GRAPH_FILENAME} from '
      f'it (`tar xzf inception-2015-12-05.tgz {GRAPH_FILENAME}`) and pass its '
      f'path, or an .npz made from it with `{CONVERT_COMMAND}`. No '
      f'checksum is published for that archive; instead loading checks that '
      f'every tensor the network needs is present with the expected shape.')


def read_arrays(path) -> dict[str, np.ndarray]:
  """Arrays keyed by graph node name from a `.pb` GraphDef or an `.npz`."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(_missing_file_message(path))
  if path.endswith('.npz'):
    with np.load(path) as data:
      return {k: data[k] for k in data.files}
  return read_graph_arrays(path)


def _epsilon(arrays) -> float:
  return float(arrays.get(EPSILON_KEY, DEFAULT_BN_EPSILON))


def convert(pb_path, npz_path, divisor: int = 1) -> str:
  """Writes the tensors the network needs from a `.pb` to an `.npz` (atomic)."""
  arrays = read_arrays(pb_path)
  flat = traverse_util.flatten_dict(
      params_from_arrays(arrays, divisor, os.fspath(pb_path)), sep='/')
  flat[EPSILON_KEY] = np.float32(_epsilon(arrays))
  files.savez(npz_path, flat)
  return os.fspath(npz_path)


# ----------------------------------------------------------------------------
# Batched, jitted feature extraction.


@dataclasses.dataclass
class InceptionFeatures:
  """Callable: images `[N, H, W, 1|3]` in [0, 255] -> dict of numpy arrays.

  Keys: `pool3` `[N, 2048]` (FID), `logits` `[N, 1008]` (the graph's
  `softmax/logits`), `logits_unbiased` `[N, 1008]` (no bias; what the original
  IS code feeds to softmax). Batches are padded to a fixed size so the jitted
  network compiles once per input resolution.
  """
  module: InceptionV3
  params: Any
  batch_size: int = 100

  def __post_init__(self):
    self._apply = jax.jit(
        lambda params, x: self.module.apply({'params': params}, x))

  def __call__(self, images) -> dict[str, np.ndarray]:
    images = np.asarray(images)
    if images.ndim != 4 or not len(images):
      raise ValueError(f'expected images [N > 0, H, W, C], got {images.shape}')
    return batching.map_padded_batches(
        lambda batch: self._apply(self.params, batch), images,
        min(self.batch_size, len(images)))


def load_inception(path, batch_size: int = 100,
                   divisor: int = 1) -> InceptionFeatures:
  """Loads `classify_image_graph_def.pb` (or its `.npz`) as a feature function.

  Args:
    path: local path to the `.pb` GraphDef or an `.npz` from `convert`.
    batch_size: images per jitted call.
    divisor: test-only width reduction; must match the file.

  Raises:
    FileNotFoundError: with download instructions, if `path` does not exist.
    InceptionWeightsError: naming the first missing or mis-shaped tensor.
  """
  arrays = read_arrays(path)
  params = params_from_arrays(arrays, divisor, os.fspath(path))
  module = InceptionV3(divisor=divisor, epsilon=_epsilon(arrays))
  return InceptionFeatures(module, jax.device_put(params), batch_size)
