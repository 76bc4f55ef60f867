"""The FID Inception network: structure, weight loading, and TF-exact ops.

No real weights are available offline, so loading is tested on synthetic
GraphDefs in the real file's format (Const nodes with the graph's names and
BatchNormWithGlobalNormalization nodes carrying its attributes), at a reduced
width for the forward pass; the full-width structure is checked abstractly.
"""

import os
import subprocess

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import PYTHON, REPO
from diffusion_distillation.evaluation.metrics import inception

import tensorflow as tf

DIVISOR = 16  # every width / 16: ~100k parameters, a fast forward pass


def _synthetic_arrays(divisor, seed=0):
  """Random tensors with the graph's names; scaled to keep activations O(1)."""
  rng = np.random.default_rng(seed)
  arrays = {}
  for name, shape in inception.expected_shapes(divisor).items():
    leaf = name.rsplit('/', 1)[-1]
    if leaf == 'conv2d_params':
      fan_in = np.prod(shape[:3])
      value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
    elif leaf == 'moving_variance':
      value = rng.uniform(0.5, 1.5, shape)
    elif leaf == 'gamma':
      value = rng.uniform(0.5, 1.5, shape)
    else:  # beta, moving_mean, softmax weights and biases
      value = rng.standard_normal(shape) * 0.1
    arrays[name] = value.astype(np.float32)
  return arrays


def _write_graph(path, arrays, scale_after_normalization, epsilon=1e-3):
  """A GraphDef like classify_image_graph_def.pb: Consts plus BN op nodes."""
  graph_def = tf.compat.v1.GraphDef()
  extras = {'ResizeBilinear/size': np.array([299, 299], np.int32),
            'Sub/y': np.float32(128), 'Mul/y': np.float32(1 / 128)}
  for name, value in {**arrays, **extras}.items():
    node = graph_def.node.add(name=name, op='Const')
    node.attr['dtype'].type = tf.as_dtype(value.dtype).as_datatype_enum
    node.attr['value'].tensor.CopyFrom(tf.make_tensor_proto(value))
  for scope in sorted({n.rsplit('/', 1)[0] for n in arrays
                       if n.endswith('/batchnorm/beta')}):
    node = graph_def.node.add(name=scope, op='BatchNormWithGlobalNormalization')
    node.input.extend([f'{scope}/{p}' for p in
                       ('moving_mean', 'moving_variance', 'beta', 'gamma')])
    node.attr['variance_epsilon'].f = epsilon
    node.attr['scale_after_normalization'].b = scale_after_normalization
  path.write_bytes(graph_def.SerializeToString())
  return path


@pytest.fixture(scope='module')
def arrays():
  return _synthetic_arrays(DIVISOR)


@pytest.fixture(scope='module')
def graph_path(tmp_path_factory, arrays):
  path = tmp_path_factory.mktemp('inception') / inception.GRAPH_FILENAME
  return _write_graph(path, arrays, scale_after_normalization=True,
                      epsilon=2e-3)


# ---------------------------------------------------------------------------
# Full-width structure (abstract, no memory or compute).


def test_full_network_tensors():
  shapes = inception.expected_shapes()
  kernels = [n for n in shapes if n.endswith('conv2d_params')]
  assert len(kernels) == 94 and len(shapes) == 94 * 5 + 2
  assert sum(int(np.prod(s)) for s in shapes.values()) == 23_885_392
  assert shapes['conv/conv2d_params'] == (3, 3, 3, 32)
  assert shapes['mixed/tower/conv_1/conv2d_params'] == (5, 5, 48, 64)
  assert shapes['mixed_3/conv/conv2d_params'] == (3, 3, 288, 384)
  assert shapes['mixed_4/tower/conv_1/conv2d_params'] == (1, 7, 128, 128)
  assert shapes['mixed_4/tower_1/conv_4/conv2d_params'] == (1, 7, 128, 192)
  assert shapes['mixed_8/tower_1/conv_3/conv2d_params'] == (3, 3, 192, 192)
  assert shapes['mixed_9/tower/mixed/conv/conv2d_params'] == (1, 3, 384, 384)
  assert shapes['mixed_10/tower_1/mixed/conv_1/conv2d_params'] == (3, 1, 384,
                                                                   384)
  assert shapes['mixed_10/tower_2/conv/conv2d_params'] == (1, 1, 2048, 192)
  assert shapes['softmax/weights'] == (2048, 1008)
  assert list(shapes)[-2:] == ['softmax/biases', 'softmax/weights']


def test_full_network_output_shapes():
  # Grayscale input: also checks the tiling to 3 channels at full width.
  module = inception.InceptionV3()
  images = jax.ShapeDtypeStruct((2, 32, 32, 1), jnp.uint8)
  params = {k: jax.ShapeDtypeStruct(v, jnp.float32)
            for k, v in inception.expected_shapes().items()}
  params = traverse_util.unflatten_dict(params, sep='/')
  out = jax.eval_shape(lambda p, x: module.apply({'params': p}, x), params,
                       images)
  assert out['pool3'].shape == (2, 2048)
  assert out['logits'].shape == out['logits_unbiased'].shape == (2, 1008)


# ---------------------------------------------------------------------------
# Loading and its errors.


def _zeros(shapes):
  return {k: np.broadcast_to(np.float32(0), v) for k, v in shapes.items()}


def test_maps_every_full_width_tensor():
  shapes = inception.expected_shapes()
  params = inception.params_from_arrays(_zeros(shapes))
  flat = traverse_util.flatten_dict(params, sep='/')
  assert {k: v.shape for k, v in flat.items()} == shapes


def test_error_names_first_missing_tensor():
  arrays = _zeros(inception.expected_shapes())
  del arrays['mixed_10/conv/conv2d_params']
  del arrays['mixed_2/tower/conv/batchnorm/moving_variance']
  with pytest.raises(inception.InceptionWeightsError,
                     match="'mixed_2/tower/conv/batchnorm/moving_variance'"):
    inception.params_from_arrays(arrays)


def test_error_names_misshaped_tensor():
  arrays = _zeros(inception.expected_shapes())
  arrays['mixed_4/tower/conv_1/conv2d_params'] = np.zeros((7, 1, 128, 128))
  with pytest.raises(inception.InceptionWeightsError,
                     match=r"'mixed_4/tower/conv_1/conv2d_params' has shape "
                     r'\(7, 1, 128, 128\).*\(1, 7, 128, 128\)'):
    inception.params_from_arrays(arrays)


def test_missing_file_explains_download(tmp_path):
  with pytest.raises(FileNotFoundError) as info:
    inception.load_inception(tmp_path / 'absent.pb')
  message = str(info.value)
  assert inception.INCEPTION_URL in message
  assert 'classify_image_graph_def.pb' in message


def test_graph_missing_tensor_is_named(tmp_path, arrays):
  partial = dict(arrays)
  del partial['mixed_5/tower_1/conv_3/conv2d_params']
  path = _write_graph(tmp_path / 'partial.pb', partial, True)
  with pytest.raises(inception.InceptionWeightsError,
                     match="'mixed_5/tower_1/conv_3/conv2d_params'"):
    inception.load_inception(path, divisor=DIVISOR)


def test_reads_graph_and_batchnorm_attributes(graph_path, arrays, tmp_path):
  read = inception.read_arrays(graph_path)
  assert float(read[inception.EPSILON_KEY]) == pytest.approx(2e-3)
  for name, value in arrays.items():
    np.testing.assert_array_equal(read[name], value)
  # Without scale_after_normalization the op ignores gamma: stored as ones.
  unscaled = inception.read_arrays(
      _write_graph(tmp_path / 'unscaled.pb', arrays, False))
  np.testing.assert_array_equal(unscaled['conv_2/batchnorm/gamma'],
                                np.ones_like(arrays['conv_2/batchnorm/gamma']))
  np.testing.assert_array_equal(unscaled['conv_2/batchnorm/beta'],
                                arrays['conv_2/batchnorm/beta'])


def test_convert_roundtrip(graph_path, tmp_path):
  npz = tmp_path / 'inception.npz'
  inception.convert(graph_path, npz, divisor=DIVISOR)
  from_pb = inception.load_inception(graph_path, divisor=DIVISOR)
  from_npz = inception.load_inception(npz, divisor=DIVISOR)
  assert from_npz.module == from_pb.module
  assert from_pb.module.epsilon == pytest.approx(2e-3)
  jax.tree_util.tree_map(np.testing.assert_array_equal, from_pb.params,
                         from_npz.params)


@pytest.mark.heavy  # starts a process
@pytest.mark.parametrize('case', ['missing', 'reduced_width'])
def test_convert_command_errors(case, graph_path, tmp_path):
  """One error line; a reduced-width graph is not the graph the tool reads."""
  pb = tmp_path / 'absent.pb' if case == 'missing' else graph_path
  npz = tmp_path / 'out.npz'
  proc = subprocess.run(
      [PYTHON, '-m', 'diffusion_distillation.inception_weights', f'--pb={pb}',
       f'--npz={npz}'], cwd=REPO, capture_output=True, text=True, timeout=300,
      check=False)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ')
  if case == 'missing':
    assert inception.INCEPTION_URL in last and inception.CONVERT_COMMAND in last
  else:
    assert 'has shape' in last and 'the network needs' in last
  assert not npz.exists()


def test_forward_pass(graph_path, arrays):
  features = inception.load_inception(graph_path, batch_size=2,
                                      divisor=DIVISOR)
  images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), np.uint8)
  out = features(images)  # 3 images in batches of 2: padding path too
  assert out['pool3'].shape == (3, 2048 // DIVISOR)
  assert out['logits'].shape == (3, 1008)
  assert all(np.all(np.isfinite(v)) for v in out.values())
  assert np.all(out['pool3'] >= 0)  # average of ReLU outputs
  np.testing.assert_allclose(out['logits'] - out['logits_unbiased'],
                             np.broadcast_to(arrays['softmax/biases'],
                                             (3, 1008)), atol=1e-5)
  np.testing.assert_allclose(
      out['logits_unbiased'], out['pool3'] @ arrays['softmax/weights'],
      rtol=1e-4, atol=1e-4)
  assert np.std(out['pool3'], axis=0).max() > 0  # inputs are told apart


# ---------------------------------------------------------------------------
# Ops against TensorFlow's own kernels.


@pytest.mark.parametrize('size', [(32, 32), (8, 8), (28, 40), (300, 299)])
def test_resize_matches_tf1_resize_bilinear(size):
  x = np.random.default_rng(1).uniform(0, 255, (2, *size, 3)).astype(
      np.float32)
  expected = tf.compat.v1.image.resize_bilinear(
      x, [299, 299], align_corners=False, half_pixel_centers=False).numpy()
  got = np.asarray(inception.resize_bilinear_tf1(jnp.asarray(x)))
  np.testing.assert_allclose(got, expected, rtol=0, atol=2e-4)


def test_preprocess_range_and_grayscale():
  gray = np.random.default_rng(2).uniform(0, 255, (1, 299, 299, 1))
  got = np.asarray(inception.preprocess(jnp.asarray(gray)))
  np.testing.assert_allclose(got, np.tile((gray - 128) / 128, (1, 1, 1, 3)),
                             atol=1e-6)
  extremes = np.asarray(inception.preprocess(
      jnp.asarray([0.0, 255.0]).reshape(1, 1, 2, 1)))
  np.testing.assert_allclose(extremes[0, 0, 0], -1.0)
  np.testing.assert_allclose(extremes[0, 0, -1], 127 / 128)


@pytest.mark.parametrize('kind,stride,padding', [
    ('avg', 1, 'SAME'), ('max', 1, 'SAME'), ('max', 2, 'VALID')])
def test_pooling_matches_tf(kind, stride, padding):
  x = np.random.default_rng(3).standard_normal((1, 9, 9, 4)).astype(
      np.float32)
  op = tf.nn.avg_pool2d if kind == 'avg' else tf.nn.max_pool2d
  expected = op(x, 3, stride, padding).numpy()
  got = np.asarray(inception.pool2d(jnp.asarray(x), kind, 3, stride, padding))
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('scale', [True, False])
@pytest.mark.parametrize('kernel,stride,padding', [
    ((3, 3), 2, 'VALID'), ((1, 7), 1, 'SAME'), ((3, 3), 1, 'SAME')])
def test_conv_batchnorm_matches_tf(kernel, stride, padding, scale, tmp_path):
  arrays = {'c/conv2d_params': np.random.default_rng(4).standard_normal(
      (*kernel, 5, 6)).astype(np.float32) * 0.3}
  rng = np.random.default_rng(5)
  for leaf, value in [('beta', rng.standard_normal(6)),
                      ('gamma', rng.uniform(0.5, 2, 6)),
                      ('moving_mean', rng.standard_normal(6)),
                      ('moving_variance', rng.uniform(0.1, 2, 6))]:
    arrays[f'c/batchnorm/{leaf}'] = value.astype(np.float32)
  x = rng.standard_normal((2, 11, 11, 5)).astype(np.float32)
  bn = {k.rsplit('/', 1)[1]: v for k, v in arrays.items() if 'batchnorm' in k}
  y = tf.nn.conv2d(x, arrays['c/conv2d_params'], stride, padding)
  y = tf.compat.v1.nn.batch_norm_with_global_normalization(
      y, bn['moving_mean'], bn['moving_variance'], bn['beta'], bn['gamma'],
      1e-3, scale)
  expected = tf.nn.relu(y).numpy()
  # Through the file reader, which folds scale_after_normalization into gamma.
  read = inception.read_arrays(_write_graph(tmp_path / 'c.pb', arrays, scale))
  params = traverse_util.unflatten_dict(
      {k: v for k, v in read.items() if k.startswith('c/')}, sep='/')['c']
  layer = inception.ConvBN(6, kernel, stride, padding, 1e-3)
  got = np.asarray(layer.apply({'params': params}, jnp.asarray(x)))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------
# Download into the cache (a local HTTP server stands in for the host).


@pytest.fixture(scope='module')
def server(tmp_path_factory, graph_path):
  """Serves `good.tgz` (the graph), `empty.tgz` and `junk.tgz`; counts GETs."""
  import functools  # pylint: disable=g-import-not-at-top
  import http.server  # pylint: disable=g-import-not-at-top
  import tarfile  # pylint: disable=g-import-not-at-top
  import threading  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('host')
  with tarfile.open(root / 'good.tgz', 'w:gz') as tar:
    tar.add(graph_path, arcname=inception.GRAPH_FILENAME)
  with tarfile.open(root / 'empty.tgz', 'w:gz') as tar:
    tar.add(graph_path, arcname='imagenet_synset_to_human_label_map.txt')
  (root / 'junk.tgz').write_bytes(b'not an archive')
  requests = []

  class Handler(http.server.SimpleHTTPRequestHandler):

    def do_GET(self):  # pylint: disable=invalid-name
      requests.append(self.path)
      super().do_GET()

    def log_message(self, *args):
      del args

  httpd = http.server.ThreadingHTTPServer(
      ('127.0.0.1', 0), functools.partial(Handler, directory=str(root)))
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield f'http://127.0.0.1:{httpd.server_address[1]}', requests
  httpd.shutdown()


UNREACHABLE = 'http://127.0.0.1:9/inception-2015-12-05.tgz'


def test_download_checks_caches_and_reuses(server, graph_path, tmp_path,
                                           monkeypatch):
  from diffusion_distillation.evaluation.metrics import inception_download  # pylint: disable=g-import-not-at-top
  base, requests = server
  monkeypatch.setenv(inception_download.URL_ENV, f'{base}/good.tgz')
  path = inception_download.ensure_weights(str(tmp_path), divisor=DIVISOR)
  assert path == str(tmp_path / 'inception' / inception.GRAPH_FILENAME)
  assert (tmp_path / 'inception').is_dir()
  assert os.listdir(tmp_path / 'inception') == [inception.GRAPH_FILENAME]
  assert open(path, 'rb').read() == graph_path.read_bytes()
  assert requests.count('/good.tgz') == 1
  # Reused: no second download, even offline.
  monkeypatch.setenv(inception_download.URL_ENV, UNREACHABLE)
  assert inception_download.ensure_weights(str(tmp_path),
                                           divisor=DIVISOR) == path
  assert requests.count('/good.tgz') == 1


@pytest.mark.parametrize('name, match', [
    ('empty.tgz', 'holds no classify_image_graph_def.pb'),
    ('junk.tgz', 'not a .tgz archive'),
    ('absent.tgz', r'could not download .*absent.tgz \(File not found\)'),
])
def test_bad_download_caches_nothing(server, tmp_path, name, match):
  from diffusion_distillation.evaluation.metrics import inception_download  # pylint: disable=g-import-not-at-top
  base, _ = server
  with pytest.raises(inception_download.WeightsDownloadError, match=match):
    inception_download.ensure_weights(str(tmp_path), f'{base}/{name}',
                                      divisor=DIVISOR)
  assert not list(tmp_path.rglob('*.pb')) and not list(
      tmp_path.rglob('.download-*'))


def test_download_of_another_graph_is_refused(server, tmp_path):
  """The loader's checks run before the file is cached (full width here)."""
  from diffusion_distillation.evaluation.metrics import inception_download  # pylint: disable=g-import-not-at-top
  base, _ = server
  with pytest.raises(inception.InceptionWeightsError, match='has shape'):
    inception_download.ensure_weights(str(tmp_path), f'{base}/good.tgz')
  assert not list((tmp_path / 'inception').iterdir())


@pytest.mark.heavy  # starts a process
def test_evaluate_offline_says_where_to_put_the_file(finished_workdir,
                                                     tmp_path):
  """`evaluate --metric=inception` without weights, offline: one line."""
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'run'
  shutil.copytree(finished_workdir[0], workdir)
  cache = tmp_path / 'cache'
  env = dict(os.environ, DD_INCEPTION_URL=UNREACHABLE, DD_CACHE_DIR=str(cache),
             JAX_PLATFORMS='cpu')
  proc = subprocess.run(
      [PYTHON, '-m', 'diffusion_distillation.evaluate', f'--workdir={workdir}',
       '--metric=inception'], cwd=REPO, env=env, capture_output=True,
      text=True, timeout=300, check=False)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  expected = cache / 'inception' / inception.GRAPH_FILENAME
  assert last.startswith(f'error: could not download the Inception weights '
                         f'from {UNREACHABLE}')
  assert f'Put {inception.GRAPH_FILENAME} at {expected} ' in last
  assert inception.INCEPTION_URL in last and '--inception_path' in last
  assert not (workdir / 'eval').exists()
