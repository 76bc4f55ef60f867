"""The digits classifier metric: accuracy, caching, and FD/IS sanity."""

import numpy as np
import pytest

from diffusion_distillation import files
from diffusion_distillation.evaluation.metrics import digits_classifier as dc
from diffusion_distillation.evaluation.metrics import frechet


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('digits')


@pytest.fixture(scope='module')
def classifier(cache_dir):
  return dc.load_or_train_digits_classifier(cache_dir / 'classifier.npz')


@pytest.fixture(scope='module')
def data():
  images, labels = dc.digits_dataset()
  train, heldout = dc.train_heldout_split(len(images))
  return images, labels, train, heldout


def test_dataset_convention(data):
  images, labels, train, heldout = data
  assert images.shape == (1797, 8, 8, 1) and images.dtype == np.float32
  assert images.min() == 0 and images.max() == 255
  assert len(np.intersect1d(train, heldout)) == 0
  assert len(train) + len(heldout) == len(images)


def test_heldout_accuracy(classifier, data):
  images, labels, _, heldout = data
  assert classifier.heldout_accuracy > 0.95
  assert dc.accuracy(classifier, images[heldout],
                     labels[heldout]) == classifier.heldout_accuracy


def test_outputs(classifier, data):
  out = classifier(data[0][:5])
  assert out['features'].shape == (5, 128)
  assert out['probs'].shape == (5, 10)
  np.testing.assert_allclose(out['probs'].sum(1), 1, atol=1e-5)


def test_cache_is_reused(classifier, cache_dir, monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError('retrained despite a valid cache')

  monkeypatch.setattr(dc, 'train_digits_classifier', fail)
  again = dc.load_or_train_digits_classifier(cache_dir / 'classifier.npz')
  assert again.fingerprint == classifier.fingerprint
  assert again.heldout_accuracy == classifier.heldout_accuracy
  assert not [p for p in cache_dir.iterdir() if p.name.startswith(files.TEMP_PREFIX)]


def test_stale_cache_is_ignored(cache_dir, tmp_path):
  with np.load(cache_dir / 'classifier.npz') as f:
    arrays = dict(f)
  arrays['format_version'] = np.int64(dc.FORMAT_VERSION - 1)
  np.savez(tmp_path / 'old.npz', **arrays)
  read = dc.read_cached_classifier
  assert read(tmp_path / 'old.npz', seed=0) is None
  assert read(cache_dir / 'classifier.npz', seed=1) is None
  assert read(tmp_path / 'absent.npz', seed=0) is None
  assert read(cache_dir / 'classifier.npz', seed=0) is not None


def test_reference_stats_cached_and_tied_to_weights(classifier, cache_dir,
                                                    data):
  path = cache_dir / 'reference.npz'
  mu, sigma, n = dc.load_or_compute_digits_reference_stats(path, classifier)
  assert n == 1797 and mu.shape == (128,) and sigma.shape == (128, 128)
  expected = frechet.stats_from_features(classifier(data[0])['features'])
  np.testing.assert_allclose(mu, expected[0])
  # Other weights (a perturbed copy) must not reuse these statistics.
  other = dc.DigitsClassifier(
      {k: {p: v + 0.01 for p, v in layer.items()}
       for k, layer in classifier.params.items()}, 0.0)
  mu2, _, _ = dc.load_or_compute_digits_reference_stats(path, other)
  assert not np.allclose(mu, mu2)
  mu3, _, _ = dc.load_or_compute_digits_reference_stats(path, classifier)
  np.testing.assert_allclose(mu3, mu)


def test_fd_small_for_real_data_large_for_noise(classifier, data):
  images, _, train, heldout = data
  features = classifier(images)['features']
  train_stats = frechet.stats_from_features(features[train])
  real = frechet.frechet_distance(
      *frechet.stats_from_features(features[heldout]), *train_stats)
  noise_images = np.random.default_rng(0).uniform(0, 255, (len(heldout), 8, 8,
                                                           1))
  noise = frechet.frechet_distance(
      *frechet.stats_from_features(classifier(noise_images)['features']),
      *train_stats)
  assert real < 10 and noise > 20 * real


def test_digits_metrics(classifier, cache_dir, data):
  images, _, _, heldout = data
  ref = dc.load_or_compute_digits_reference_stats(
      cache_dir / 'reference.npz', classifier)
  real = dc.digits_metrics(images[heldout], classifier, ref)
  blank = dc.digits_metrics(np.zeros((50, 8, 8, 1)), classifier, ref)
  assert set(real) == {'digits_fd', 'digits_is'}
  assert real['digits_is'] > 8.5 and blank['digits_is'] < 1.01
  assert real['digits_fd'] < 10 < blank['digits_fd']
