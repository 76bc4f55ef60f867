"""An offline FID/IS analogue for the embedded 8x8 digits data set.

Inception weights cannot be downloaded everywhere, and an ImageNet network says
little about 8x8 digits anyway. This module trains (in a few seconds on CPU,
seeded and deterministic) a small MLP classifier on scikit-learn's digits and
uses it the way FID and IS use Inception:

* `digits_fd`: Frechet distance between Gaussians fitted to the classifier's
  penultimate-layer features of generated and of real digits;
* `digits_is`: exp(E KL(p(y|x) || p(y))) from its 10-class probabilities
  (between 1 and 10).

The names differ from `fid` / `inception_score` on purpose: these numbers are
not comparable with anything published. The trained classifier and the real
data statistics are cached to files (written atomically) so every evaluation
uses the same network.

Pixel convention: images are `[N, 8, 8, 1]` floats in [0, 255]; the real data
(sklearn values 0..16) is scaled by 255 / 16 (`DIGITS_PIXEL_SCALE`).
"""

import dataclasses
import os
from typing import Any

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax
import sklearn.datasets

from diffusion_distillation.evaluation.metrics import batching
from diffusion_distillation import files
from diffusion_distillation.evaluation.metrics import fingerprint as fingerprint_lib
from diffusion_distillation.evaluation.metrics import frechet

DIGITS_PIXEL_SCALE = 255.0 / 16.0
NUM_CLASSES = 10
HELDOUT_FRACTION = 0.2
# Bump when the network, data split or training changes, so stale caches are
# retrained instead of silently reused.
FORMAT_VERSION = 2
_MIN_ACCURACY = 0.95
_BATCH = 512  # images per jitted classifier call


def digits_dataset():
  """All 1797 digits as `([N, 8, 8, 1] float32 in [0, 255], [N] int32)`."""
  data = sklearn.datasets.load_digits()
  images = data.images.astype(np.float32) * np.float32(DIGITS_PIXEL_SCALE)
  return images[..., None], data.target.astype(np.int32)


def train_heldout_split(num_examples: int, seed: int = 0):
  """Fixed permutation split: (train indices, held-out indices)."""
  order = np.random.RandomState(seed).permutation(num_examples)
  num_heldout = int(round(num_examples * HELDOUT_FRACTION))
  return np.sort(order[num_heldout:]), np.sort(order[:num_heldout])


class DigitsNet(nn.Module):
  """MLP 64 -> 256 -> 128 (features) -> 10 on pixels scaled to [0, 1].

  GELU rather than ReLU so no feature unit is constant (dead), which would
  make the feature covariance singular.
  """
  hidden: tuple[int, ...] = (256, 128)

  @nn.compact
  def __call__(self, images):
    x = images.reshape(images.shape[0], -1) / 255.0
    for width in self.hidden:
      x = nn.gelu(nn.Dense(width)(x))
    return x, nn.Dense(NUM_CLASSES)(x)


def _init_params(hidden: tuple[int, ...], seed: int):
  """LeCun-normal kernels, zero biases, drawn with numpy.

  Equivalent in distribution to `DigitsNet.init`, but needs no compilation
  (on a busy CPU, jitting Flax's initializers costs seconds).
  """
  rng = np.random.RandomState(seed)
  dims = (64,) + tuple(hidden) + (NUM_CLASSES,)
  return {f'Dense_{i}': dict(
      kernel=(rng.randn(a, b) / np.sqrt(a)).astype(np.float32),
      bias=np.zeros(b, np.float32))
          for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))}


def _train(images, labels, seed: int, steps: int = 500, batch_size: int = 128,
           learning_rate: float = 3e-3):
  """AdamW on random minibatches, all steps inside one jitted `lax.scan`.

  Deterministic for a given seed (initialization and batches both derive from
  it). The data are jit arguments rather than closed-over constants: XLA would
  otherwise constant-fold through them, which takes longer than training.
  """
  net = DigitsNet()
  optimizer = optax.adamw(learning_rate, weight_decay=1e-4)

  def loss_fn(p, x, y):
    _, logits = net.apply({'params': p}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def step(carry, key, x, y):
    p, opt_state = carry
    idx = jax.random.randint(key, (batch_size,), 0, x.shape[0])
    grads = jax.grad(loss_fn)(p, x[idx], y[idx])
    updates, opt_state = optimizer.update(grads, opt_state, p)
    return (optax.apply_updates(p, updates), opt_state), None

  @jax.jit
  def run(params, x, y, key):
    init = (params, optimizer.init(params))
    keys = jax.random.split(key, steps)
    (params, _), _ = jax.lax.scan(lambda c, k: step(c, k, x, y), init, keys)
    return params

  params = _init_params(net.hidden, seed)
  return jax.device_get(run(params, images, labels, jax.random.PRNGKey(seed)))


@dataclasses.dataclass
class DigitsClassifier:
  """Callable: images `[N, 8, 8, 1]` in [0, 255] -> `dict(features, probs)`."""
  params: Any
  heldout_accuracy: float

  def __post_init__(self):
    net = DigitsNet()

    def apply(params, images):
      features, logits = net.apply({'params': params}, images)
      return dict(features=features, probs=jax.nn.softmax(logits))

    self._apply = jax.jit(apply)

  def __call__(self, images) -> dict[str, np.ndarray]:
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[1:] != (8, 8, 1) or not len(images):
      raise ValueError(f'expected images [N > 0, 8, 8, 1], got {images.shape}')
    # Fixed-size (padded) calls, so the jitted net compiles only once.
    return batching.map_padded_batches(
        lambda batch: self._apply(self.params, batch), images, _BATCH)

  @property
  def fingerprint(self) -> str:
    """Hash of the weights; ties cached reference statistics to them."""
    return fingerprint_lib.params_fingerprint(self.params, with_shapes=False)


def _flatten(params) -> dict[str, np.ndarray]:
  return {k: np.asarray(v)
          for k, v in traverse_util.flatten_dict(params, sep='/').items()}


def accuracy(classifier: DigitsClassifier, images, labels) -> float:
  return float(np.mean(classifier(images)['probs'].argmax(axis=1) == labels))


def train_digits_classifier(seed: int = 0) -> DigitsClassifier:
  """Trains on the train split and measures accuracy on the held-out split."""
  images, labels = digits_dataset()
  train, heldout = train_heldout_split(len(images), seed)
  params = _train(jnp.asarray(images[train]), jnp.asarray(labels[train]), seed)
  classifier = DigitsClassifier(params, heldout_accuracy=0.0)
  classifier.heldout_accuracy = accuracy(classifier, images[heldout],
                                         labels[heldout])
  if classifier.heldout_accuracy < _MIN_ACCURACY:
    raise RuntimeError(f'digits classifier held-out accuracy '
                       f'{classifier.heldout_accuracy:.3f} < {_MIN_ACCURACY}')
  return classifier


def read_cached_classifier(path, seed: int = 0):
  """The classifier cached at `path`, or None when absent, unreadable or stale.

  Stale: written by another `FORMAT_VERSION` or for another seed.
  """
  try:
    with np.load(os.fspath(path)) as data:
      arrays = {k: data[k] for k in data.files}
  except (OSError, ValueError, EOFError):
    return None
  if (int(arrays.pop('format_version', -1)) != FORMAT_VERSION
      or int(arrays.pop('seed', -1)) != seed
      or 'heldout_accuracy' not in arrays):
    return None
  heldout_accuracy = float(arrays.pop('heldout_accuracy'))
  params = traverse_util.unflatten_dict(arrays, sep='/')
  return DigitsClassifier(params, heldout_accuracy)


def load_or_train_digits_classifier(cache_path,
                                    seed: int = 0) -> DigitsClassifier:
  """The classifier cached at `cache_path`, trained and cached first if needed.

  Training happens when the file is missing, unreadable, or was written by
  another `FORMAT_VERSION` or seed; the file is replaced atomically.
  """
  classifier = read_cached_classifier(cache_path, seed)
  if classifier is None:
    classifier = train_digits_classifier(seed)
    arrays = _flatten(classifier.params)
    arrays.update(format_version=np.int64(FORMAT_VERSION), seed=np.int64(seed),
                  heldout_accuracy=np.float64(classifier.heldout_accuracy))
    files.savez(cache_path, arrays)
  return classifier


def load_or_compute_digits_reference_stats(cache_path,
                                           classifier: DigitsClassifier):
  """`(mu, sigma, num_examples)` of the features of all real digits, cached.

  The cache records the classifier's fingerprint and is recomputed when it was
  made with other weights.
  """
  try:
    with np.load(os.fspath(cache_path)) as data:
      if str(data['fingerprint']) == classifier.fingerprint:
        return data['mu'], data['sigma'], int(data['num_examples'])
  except (OSError, ValueError, KeyError, EOFError):
    pass
  images, _ = digits_dataset()
  mu, sigma = frechet.stats_from_features(classifier(images)['features'])
  files.savez(cache_path, dict(
      mu=mu, sigma=sigma, num_examples=np.int64(len(images)),
      fingerprint=np.asarray(classifier.fingerprint)))
  return mu, sigma, len(images)


def digits_metrics(images, classifier: DigitsClassifier, reference_stats,
                   splits: int = 1) -> dict[str, float]:
  """`digits_fd` against `reference_stats` and `digits_is` of `images`.

  Args:
    images: generated `[N, 8, 8, 1]` in [0, 255], N >= 2.
    classifier: from `load_or_train_digits_classifier`.
    reference_stats: `(mu, sigma, ...)` from
      `load_or_compute_digits_reference_stats`.
    splits: chunks for the IS mean (1: one score over all N images).
  """
  out = classifier(images)
  mu, sigma = frechet.stats_from_features(out['features'])
  fd = frechet.frechet_distance(mu, sigma, reference_stats[0],
                                reference_stats[1])
  score, _ = frechet.inception_score(out['probs'], splits=splits)
  return dict(digits_fd=fd, digits_is=score)
