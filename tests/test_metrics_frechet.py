"""Frechet distance, streaming statistics and Inception Score."""

import numpy as np
import pytest
import scipy.linalg

from diffusion_distillation.evaluation.metrics import frechet


def _random_psd(rng, d, rank=None):
  a = rng.standard_normal((d, rank or d))
  return a @ a.T / d


def _direct(mu1, sigma1, mu2, sigma2):
  """Independent float64 route: tr sqrt(S1 S2) = tr sqrt(S1^1/2 S2 S1^1/2)."""
  w, v = np.linalg.eigh(sigma1)
  root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  inner = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
  diff = mu1 - mu2
  return (diff @ diff + np.trace(sigma1) + np.trace(sigma2)
          - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


@pytest.mark.parametrize('d', [1, 3, 16])
def test_matches_direct_computation(d):
  rng = np.random.default_rng(d)
  mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
  s1, s2 = _random_psd(rng, d), _random_psd(rng, d)
  got = frechet.frechet_distance(mu1, s1, mu2, s2)
  np.testing.assert_allclose(got, _direct(mu1, s1, mu2, s2), rtol=1e-9,
                             atol=1e-9)


def test_identical_gaussians_give_zero():
  rng = np.random.default_rng(0)
  mu, sigma = rng.standard_normal(8), _random_psd(rng, 8)
  assert abs(frechet.frechet_distance(mu, sigma, mu, sigma)) < 1e-9


def test_identical_singular_gaussians_give_zero():
  # Fewer samples than dimensions, as with small FID sample sets.
  features = np.random.default_rng(1).standard_normal((5, 12))
  mu, sigma = frechet.stats_from_features(features)
  assert abs(frechet.frechet_distance(mu, sigma, mu, sigma)) < 1e-4


def test_singular_covariances_are_finite_and_close_to_direct():
  rng = np.random.default_rng(2)
  s1, s2 = _random_psd(rng, 10, rank=3), _random_psd(rng, 10, rank=4)
  mu = np.zeros(10)
  got = frechet.frechet_distance(mu, s1, mu, s2)
  assert np.isfinite(got)
  np.testing.assert_allclose(got, _direct(mu, s1, mu, s2), atol=1e-4)


def test_one_dimensional_closed_form():
  mu1, s1, mu2, s2 = 0.3, 1.7, -1.1, 0.4
  got = frechet.frechet_distance(mu1, s1**2, mu2, s2**2)
  np.testing.assert_allclose(got, (mu1 - mu2)**2 + (s1 - s2)**2, rtol=1e-12)


def test_diagonal_closed_form():
  rng = np.random.default_rng(3)
  mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
  v1, v2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
  expected = np.sum((mu1 - mu2)**2) + np.sum((np.sqrt(v1) - np.sqrt(v2))**2)
  got = frechet.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))
  np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_agrees_with_scipy_sqrtm_formula():
  rng = np.random.default_rng(4)
  s1, s2 = _random_psd(rng, 20), _random_psd(rng, 20)
  mu1, mu2 = rng.standard_normal(20), rng.standard_normal(20)
  covmean = np.real(scipy.linalg.sqrtm(s1 @ s2))
  expected = (np.sum((mu1 - mu2)**2) + np.trace(s1) + np.trace(s2)
              - 2 * np.trace(covmean))
  np.testing.assert_allclose(frechet.frechet_distance(mu1, s1, mu2, s2),
                             expected, rtol=1e-10)


def test_large_imaginary_component_raises():
  # Not a covariance: sigma1 sigma2 has eigenvalue -1, so its root is i.
  with pytest.raises(ValueError, match='imaginary'):
    frechet.frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2),
                             np.eye(2))


def test_shape_mismatch_raises():
  with pytest.raises(ValueError, match='shape'):
    frechet.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_stats_from_features_matches_numpy():
  x = np.random.default_rng(5).standard_normal((50, 4)).astype(np.float32)
  mu, sigma = frechet.stats_from_features(x)
  np.testing.assert_allclose(mu, x.astype(np.float64).mean(0))
  np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False))


def test_streaming_equals_batch():
  rng = np.random.default_rng(6)
  # A large common offset checks the shifted accumulation against cancellation.
  x = 1e4 + rng.standard_normal((101, 7)) * rng.uniform(0.1, 2, 7)
  acc = frechet.StatsAccumulator()
  for start, stop in [(0, 30), (30, 31), (31, 80), (80, 101)]:
    acc.update(x[start:stop].astype(np.float32))
  mu, sigma = frechet.stats_from_features(x.astype(np.float32))
  got_mu, got_sigma = acc.stats()
  assert acc.num_examples == 101
  np.testing.assert_allclose(got_mu, mu, rtol=1e-12)
  np.testing.assert_allclose(got_sigma, sigma, rtol=1e-9, atol=1e-9)


def test_streaming_validates_input():
  acc = frechet.StatsAccumulator(dim=3)
  with pytest.raises(ValueError):
    acc.stats()
  with pytest.raises(ValueError):
    acc.update(np.zeros((2, 4)))
  acc.update(np.zeros((1, 3)))
  with pytest.raises(ValueError, match='at least 2'):
    acc.covariance()


def test_save_load_roundtrip(tmp_path):
  rng = np.random.default_rng(7)
  mu, sigma = rng.standard_normal(5), _random_psd(rng, 5)
  path = tmp_path / 'sub' / 'stats.npz'
  frechet.save_stats(path, mu, sigma, 123)
  got_mu, got_sigma, n = frechet.load_stats(path)
  np.testing.assert_array_equal(got_mu, mu)
  np.testing.assert_array_equal(got_sigma, sigma)
  assert n == 123
  assert [p.name for p in path.parent.iterdir()] == ['stats.npz']


def test_inception_score_uniform_predictions_is_one():
  probs = np.full((100, 10), 0.1)
  mean, std = frechet.inception_score(probs, splits=5)
  np.testing.assert_allclose([mean, std], [1.0, 0.0], atol=1e-12)


def test_inception_score_confident_balanced_is_num_classes():
  probs = np.tile(np.eye(7), (6, 1))  # each split: every class equally often
  mean, std = frechet.inception_score(probs, splits=3)
  np.testing.assert_allclose([mean, std], [7.0, 0.0], atol=1e-12)


def test_inception_score_from_logits_matches_probs():
  logits = np.random.default_rng(8).standard_normal((40, 6)) * 3
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  from_probs = frechet.inception_score(probs, splits=4)
  from_logits = frechet.inception_score(logits, splits=4, from_logits=True)
  np.testing.assert_allclose(from_logits, from_probs, rtol=1e-10)
  assert 1.0 < from_probs[0] < 6.0 and from_probs[1] > 0


def test_inception_score_rejects_logits_as_probs():
  with pytest.raises(ValueError, match='from_logits'):
    frechet.inception_score(np.random.default_rng(9).standard_normal((10, 3)))
