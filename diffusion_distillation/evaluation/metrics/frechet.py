"""Frechet distance between Gaussians and the Inception Score, in float64.

FID (Heusel et al., 2017) fits a Gaussian to the features of real and of
generated images and reports

    ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)).

The matrix square root is the fragile part: with fewer samples than feature
dimensions the covariances are singular, and `scipy.linalg.sqrtm` of their
product can return non-finite values or a small spurious imaginary part. We
follow the reference implementation (TTUR's `fid.py`): retry with `eps` added
to both diagonals, and drop an imaginary part only when it is negligible.

Features are accumulated in float64 (`StatsAccumulator`) so 50k x 2048 features
never have to be held in memory, and summing 50k float32 outer products does
not lose the digits the trace difference depends on.

The Inception Score (Salimans et al., 2016) is exp(E_x KL(p(y|x) || p(y))),
averaged over `splits` disjoint chunks as in openai/improved-gan.
"""

import os
import warnings

import numpy as np
import scipy.linalg
import scipy.special

from diffusion_distillation import files

# Largest |imag| on the diagonal of sqrtm(sigma1 sigma2) accepted as round-off
# (the value used by TTUR and pytorch-fid).
_IMAG_ATOL = 1e-3
# Relative Frobenius residual ||X X - A|| / ||A|| above which the square root
# is deemed unreliable (besides being non-finite) and retried with the offset.
_SQRTM_RTOL = 1e-3


def _as_vector(mu):
  return np.atleast_1d(np.asarray(mu, np.float64))


def _as_matrix(sigma):
  return np.atleast_2d(np.asarray(sigma, np.float64))


def _sqrtm_residual(root, a):
  """Relative error of `root` as a square root of `a`."""
  scale = max(np.linalg.norm(a), np.finfo(np.float64).tiny)
  return np.linalg.norm(root @ root - a) / scale


def _sqrtm_product(sigma1, sigma2, eps):
  """sqrtm(sigma1 @ sigma2); retried with `eps * I` added if unreliable."""
  product = sigma1 @ sigma2
  with warnings.catch_warnings():
    # Singular products are expected (N < D); the checks below handle them.
    warnings.simplefilter('ignore', scipy.linalg.LinAlgWarning)
    root = scipy.linalg.sqrtm(product)
  if np.all(np.isfinite(root)) and _sqrtm_residual(root, product) < _SQRTM_RTOL:
    return root
  offset = eps * np.eye(sigma1.shape[0])
  return scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  """Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

  Args:
    mu1, mu2: means, shape `[D]` (scalars are treated as `D = 1`).
    sigma1, sigma2: covariances, shape `[D, D]` (scalars: variances).
    eps: diagonal offset used when the product of covariances is (nearly)
      singular and `sqrtm` fails without it.

  Returns:
    The distance as a Python float, computed in float64.

  Raises:
    ValueError: on mismatched shapes, or when `sqrtm` leaves an imaginary
      component too large to be round-off.
  """
  mu1, mu2 = _as_vector(mu1), _as_vector(mu2)
  sigma1, sigma2 = _as_matrix(sigma1), _as_matrix(sigma2)
  d = mu1.shape[0]
  if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
    raise ValueError(f'shape mismatch: mu1 {mu1.shape}, mu2 {mu2.shape}, '
                     f'sigma1 {sigma1.shape}, sigma2 {sigma2.shape}')
  covmean = _sqrtm_product(sigma1, sigma2, eps)
  if not np.all(np.isfinite(covmean)):
    raise ValueError('sqrtm(sigma1 @ sigma2) is not finite, even with offset')
  if np.iscomplexobj(covmean):
    largest = np.max(np.abs(np.diagonal(covmean).imag))
    if largest > _IMAG_ATOL:
      raise ValueError(f'sqrtm(sigma1 @ sigma2) has imaginary component '
                       f'{largest:.3g} > {_IMAG_ATOL}')
    covmean = covmean.real
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2)
               - 2.0 * np.trace(covmean))


def stats_from_features(features):
  """(mean, covariance) of `features` `[N, D]` in float64, unbiased (N - 1)."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f'need features [N >= 2, D], got {features.shape}')
  return features.mean(axis=0), np.cov(features, rowvar=False)


class StatsAccumulator:
  """Streaming mean and covariance of feature batches, in float64.

  Keeps a running sum and outer-product sum of `x - shift`, where `shift` is
  the mean of the first batch: the covariance does not depend on the shift,
  and removing most of the mean avoids the cancellation in
  `sum(x x^T) - n mu mu^T` when features have a large mean.
  """

  def __init__(self, dim: int | None = None):
    self._dim = dim
    self._n = 0
    self._shift = None
    self._sum = None
    self._outer = None

  @property
  def num_examples(self) -> int:
    return self._n

  def update(self, features) -> None:
    """Adds a batch of features `[B, D]`."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2:
      raise ValueError(f'expected features [B, D], got {x.shape}')
    if self._shift is None:
      if self._dim is not None and x.shape[1] != self._dim:
        raise ValueError(f'expected D = {self._dim}, got {x.shape[1]}')
      self._dim = x.shape[1]
      self._shift = x.mean(axis=0) if len(x) else np.zeros(self._dim)
      self._sum = np.zeros(self._dim)
      self._outer = np.zeros((self._dim, self._dim))
    elif x.shape[1] != self._dim:
      raise ValueError(f'expected D = {self._dim}, got {x.shape[1]}')
    centered = x - self._shift
    self._sum += centered.sum(axis=0)
    self._outer += centered.T @ centered
    self._n += x.shape[0]

  def mean(self) -> np.ndarray:
    self._require(1)
    return self._shift + self._sum / self._n

  def covariance(self) -> np.ndarray:
    """Unbiased covariance (divides by N - 1), matching `np.cov`."""
    self._require(2)
    centered_mean = self._sum / self._n
    cov = (self._outer - self._n * np.outer(centered_mean, centered_mean))
    return cov / (self._n - 1)

  def stats(self):
    """(mu, sigma) of everything added so far."""
    return self.mean(), self.covariance()

  def _require(self, n):
    if self._n < n:
      raise ValueError(f'need at least {n} examples, have {self._n}')


def save_stats(path, mu, sigma, num_examples: int) -> None:
  """Writes statistics to an `.npz` atomically (temp file, then rename)."""
  files.savez(path, dict(mu=np.asarray(mu, np.float64),
                         sigma=np.asarray(sigma, np.float64),
                         num_examples=np.asarray(num_examples, np.int64)))


def load_stats(path):
  """Reads `(mu, sigma, num_examples)` written by `save_stats`."""
  with np.load(os.fspath(path)) as data:
    return data['mu'], data['sigma'], int(data['num_examples'])


def _log_probs(values, from_logits: bool) -> np.ndarray:
  """Row-wise log class probabilities in float64, validating probabilities."""
  values = np.asarray(values, np.float64)
  if values.ndim != 2:
    raise ValueError(f'expected [N, classes], got {values.shape}')
  if from_logits:
    return scipy.special.log_softmax(values, axis=1)
  if np.any(values < 0) or not np.allclose(values.sum(axis=1), 1.0, atol=1e-3):
    raise ValueError('rows are not probability vectors; pass '
                     'from_logits=True for logits')
  with np.errstate(divide='ignore'):
    return np.log(values)


def _split_score(log_p) -> float:
  """exp(mean_x KL(p(y|x) || p(y))) for one chunk; 0 log 0 counts as 0."""
  p = np.exp(log_p)
  with np.errstate(divide='ignore', invalid='ignore'):
    log_marginal = np.log(p.mean(axis=0))
    kl = np.where(p > 0, p * (log_p - log_marginal), 0.0)
  return float(np.exp(kl.sum(axis=1).mean()))


def inception_score(logits_or_probs, splits: int = 10,
                    from_logits: bool = False):
  """Inception Score: (mean, std) over `splits` consecutive chunks.

  Chunking follows openai/improved-gan (`n * i // splits` boundaries), so with
  the same predictions the numbers agree with published IS values.

  Args:
    logits_or_probs: `[N, classes]` class probabilities, or logits when
      `from_logits=True` (softmax is then taken here in float64).
    splits: number of disjoint chunks.
    from_logits: whether the input holds logits rather than probabilities.

  Returns:
    `(mean, std)` of the per-chunk scores as Python floats.
  """
  log_p = _log_probs(logits_or_probs, from_logits)
  n = log_p.shape[0]
  if not 1 <= splits <= n:
    raise ValueError(f'need 1 <= splits <= N = {n}, got {splits}')
  scores = [_split_score(log_p[i * n // splits:(i + 1) * n // splits])
            for i in range(splits)]
  return float(np.mean(scores)), float(np.std(scores))
