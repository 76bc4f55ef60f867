"""The metrics an evaluation scores samples with, and their cached inputs.

* `digits` (8x8 digits only): `digits_fd` and `digits_is` from the offline
  digits classifier (`metrics/digits_classifier.py`). Not comparable with any
  published number.
* `inception`: `fid` against the Inception pool3 statistics of the data set's
  *train* split (the paper's CIFAR-10 FIDs use the 50k train images), and `is`
  (Inception Score, 10 splits, from the unbiased logits). Needs the 2015-12-05
  Inception weights.

Caches (local files under the cache directory, shared by all workdirs and
written atomically; delete a file to recompute it): the digits classifier and
its reference statistics, local copies of gs:// Inception weights, and the
Inception reference statistics `fid_stats/<dataset>_<split>_<count>_<weights
hash>.npz`. Metrics run on this process's local devices, without
cross-process communication.
"""

import dataclasses
import functools
import hashlib
import itertools
import os
import time
from typing import Any, Callable, Optional

from absl import logging
from etils import epath
import jax
import numpy as np

from diffusion_distillation import config as config_lib
from diffusion_distillation import data as data_lib
from diffusion_distillation import files
from diffusion_distillation.evaluation.metrics import batching
from diffusion_distillation.evaluation.metrics import fingerprint as fingerprint_lib
from diffusion_distillation.evaluation.metrics import frechet
from diffusion_distillation.evaluation.metrics import inception
from diffusion_distillation.evaluation.metrics import inception_download
from diffusion_distillation.evaluation.settings import EvalError
from diffusion_distillation.evaluation.settings import Settings
from diffusion_distillation.models import images as images_lib

# Inception Score splits (openai/improved-gan; fewer when there are fewer
# samples than splits).
IS_SPLITS = 10
_INCEPTION_BATCH = 200  # images per jitted Inception call (all local devices)
_REFERENCE_BATCH = 500  # real images read per batch for reference statistics


@dataclasses.dataclass
class Metric:
  """Scores uint8 samples `[N, H, W, C]`; names its values."""
  name: str  # 'digits' or 'inception'
  main: str  # the headline value (lower is better)
  score: str  # the Inception-Score-like value (higher is better)
  compute: Callable[[np.ndarray], dict[str, float]]
  info: dict[str, Any]  # goes into results.json (reference statistics etc.)
  # (samples, requested labels) -> the fraction classified as requested;
  # None when the metric has no classifier of the data set's classes.
  class_accuracy: Optional[Callable[[np.ndarray, np.ndarray], float]] = None

  @property
  def value_names(self) -> tuple[str, ...]:
    return (self.main, self.score)


def make_metric(config, settings: Settings,
                inception_divisor: int = 1) -> Metric:
  """The metric `settings.metric` names, its caches loaded or computed."""
  if settings.metric == 'digits':
    return digits_metric(settings.cache_dir)
  return inception_metric(config, settings, inception_divisor)


def digits_metric(cache_dir: str) -> Metric:
  """`digits_fd` / `digits_is` from the cached digits classifier."""
  # Imported here: scikit-learn is only needed for this metric.
  from diffusion_distillation.evaluation.metrics import digits_classifier as dc  # pylint: disable=g-import-not-at-top
  classifier = dc.load_or_train_digits_classifier(
      os.path.join(cache_dir, 'digits_classifier.npz'))
  reference = dc.load_or_compute_digits_reference_stats(
      os.path.join(cache_dir, 'digits_reference_stats.npz'), classifier)

  def compute(samples):
    return dc.digits_metrics(samples, classifier, reference)

  return Metric('digits', *config_lib.METRIC_VALUES['digits'], compute, dict(
      classifier_heldout_accuracy=round(classifier.heldout_accuracy, 4),
      classifier_fingerprint=classifier.fingerprint,
      reference='all 1797 scikit-learn digits',
      reference_num_examples=reference[2]),
                class_accuracy=lambda x, y: dc.accuracy(classifier, x, y))


# --- Inception ---------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _inception_apply(module):
  """One jitted network per module, data-parallel over this host's devices."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  mesh = Mesh(np.asarray(jax.local_devices()), ('data',))
  rep, split = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  apply = jax.jit(lambda p, x: module.apply({'params': p}, x),
                  in_shardings=(rep, split), out_shardings=rep)
  return apply, rep, split


def local_inception(module, params, batch_size: int):
  """Images (uint8 or float in [0, 255]) -> dict of numpy outputs.

  Every call of the network sees exactly `batch_size` images (rounded up to a
  multiple of the local device count; the last chunk is zero-padded), so
  samples and real data of one resolution share one compiled program.
  """
  apply, rep, split = _inception_apply(module)
  devices = len(jax.local_devices())
  size = -(-batch_size // devices) * devices
  params = jax.device_put(params, rep)

  def features(images) -> dict[str, np.ndarray]:
    return batching.map_padded_batches(
        lambda batch: apply(params, jax.device_put(batch, split)),
        np.asarray(images), size)

  return features


def _local_weights(path: str, cache_dir: str) -> str:
  """A local copy of a (possibly gs://) weights file."""
  p = epath.Path(path)
  if '://' not in path:
    return path
  if not p.exists():
    return path  # load_inception raises the usual message
  tag = hashlib.sha256(path.encode()).hexdigest()[:8]
  local = os.path.join(cache_dir, 'inception', f'{tag}_{p.name}')
  if not os.path.exists(local):
    files.write_bytes(local, p.read_bytes())
  return local


def load_inception_or_fail(path: str, cache_dir: str, divisor: int = 1):
  """`inception.load_inception`, with a one-line EvalError on failure.

  Without a `path`, the standard file is downloaded once into `cache_dir`
  (`inception_download`).
  """
  try:
    if not path:
      path = inception_download.ensure_weights(cache_dir, divisor=divisor)
    return inception.load_inception(_local_weights(path, cache_dir),
                                    divisor=divisor)
  except (FileNotFoundError, inception_download.WeightsDownloadError,
          inception.InceptionWeightsError) as e:
    raise EvalError(str(e)) from None


def _read_reference_stats(path: str):
  """`(mu, sigma, n)` cached at `path`, or None when absent or unreadable."""
  if not os.path.exists(path):
    return None
  try:
    mu, sigma, n = frechet.load_stats(path)
  except (OSError, ValueError, KeyError, EOFError):
    logging.warning('unreadable reference statistics %s; recomputing', path)
    return None
  logging.info('reference statistics: %s (%d examples)', path, n)
  return mu, sigma, n


def _real_batches(config, split: str, batch_size: int, workdir: str):
  """The batches of the real `split`, with a one-line error if unreadable."""
  name = config.dataset.name
  try:
    dataset = data_lib.from_config(config, workdir or None, write_index=False)
    batches = dataset.eval_batches(batch_size=batch_size, split=split)
    first = next(batches, None)
  except Exception as e:  # pylint: disable=broad-except
    # Usually the data set is not prepared (or not reachable) here.
    message = str(e).strip().splitlines()[0] if str(e).strip() else ''
    raise EvalError(f'cannot read {name}/{split} for the FID reference '
                    f'statistics: {type(e).__name__}: {message}') from e
  return batches if first is None else itertools.chain([first], batches)


def _pool3_stats(features, batches, limit: Optional[int], t0: float):
  """Accumulates pool3 features of real images (rounded to uint8, as the
  samples are) over `batches`, stopping after `limit` examples if given."""
  acc = frechet.StatsAccumulator()
  for i, batch in enumerate(batches):
    real = images_lib.to_uint8(batch['image'])
    if limit:
      real = real[:limit - acc.num_examples]
    if len(real):
      acc.update(features(real)['pool3'])
    if i % 20 == 19:
      logging.info('  %d examples (%.0fs)', acc.num_examples, time.time() - t0)
    if limit and acc.num_examples >= limit:
      break
  return acc


def reference_data(config, cache_dir: str, workdir: str = ''):
  """`(name, split, directory)` of a config's FID reference statistics.

  The paper's: the train split, cached under `cache_dir` by data set name
  (a `tfds` data set's name is its TFDS name and resolution). An image
  folder's: its held-out split, cached in the workdir, which holds the
  folder's index.
  """
  dataset = config.dataset
  if dataset.name == 'image_folder':
    return 'image_folder', 'eval', workdir or cache_dir
  if dataset.name == 'tfds':
    name = f'tfds-{dataset.tfds_name}-{dataset.image_size}'.replace('/', '-')
    return name, 'train', cache_dir
  return dataset.name, 'train', cache_dir


def inception_reference_stats(config, features, fingerprint: str,
                              cache_dir: str, workdir: str = '',
                              limit: Optional[int] = None,
                              batch_size: int = _REFERENCE_BATCH):
  """`(mu, sigma, n, path)` of pool3 features of the real images, cached.

  Which images and where: `reference_data`. The cache file is keyed by data
  set name, split, example count (`all` or the limit) and the Inception
  weights' fingerprint.
  """
  name, split, directory = reference_data(config, cache_dir, workdir)
  count = 'all' if not limit else str(limit)
  path = os.path.join(directory, 'fid_stats',
                      f'{name}_{split}_{count}_{fingerprint}.npz')
  cached = _read_reference_stats(path)
  if cached is not None:
    return (*cached, path)
  logging.info('computing Inception statistics of %s/%s (%s examples) -> %s',
               name, split, count, path)
  t0 = time.time()
  acc = _pool3_stats(features,
                     _real_batches(config, split, batch_size, workdir), limit,
                     t0)
  if acc.num_examples < 2:
    more = (' (hold out more: dataset.eval_fraction)'
            if name == 'image_folder' else '')
    raise EvalError(f'{name}/{split} has {acc.num_examples} examples; the '
                    f'reference statistics need at least 2{more}')
  mu, sigma = acc.stats()
  frechet.save_stats(path, mu, sigma, acc.num_examples)
  logging.info('reference statistics: %d examples in %.0fs', acc.num_examples,
               time.time() - t0)
  return mu, sigma, acc.num_examples, path


def inception_metric(config, settings: Settings, divisor: int = 1) -> Metric:
  """FID against the train split's statistics, and the Inception Score.

  `divisor` > 1 is for tests only (a reduced-width network).
  """
  net = load_inception_or_fail(settings.inception_path, settings.cache_dir,
                               divisor)
  features = local_inception(net.module, net.params,
                             min(_INCEPTION_BATCH, settings.num_samples))
  fingerprint = fingerprint_lib.params_fingerprint(net.params)
  limit = config.eval.reference_num_examples or None
  mu_ref, sigma_ref, n_ref, path = inception_reference_stats(
      config, features, fingerprint, settings.cache_dir, settings.workdir,
      limit=limit)

  def compute(samples):
    out = features(samples)
    mu, sigma = frechet.stats_from_features(out['pool3'])
    fid = frechet.frechet_distance(mu, sigma, mu_ref, sigma_ref)
    score, std = frechet.inception_score(
        out['logits_unbiased'], splits=min(IS_SPLITS, len(samples)),
        from_logits=True)
    return {'fid': fid, 'is': score, 'is_std': std}

  name, split, _ = reference_data(config, settings.cache_dir)
  info = dict(reference=f'{name} {split} split',
              reference_num_examples=n_ref, reference_limit=limit,
              inception_weights=settings.inception_path,
              inception_fingerprint=fingerprint, reference_stats=path,
              is_splits=min(IS_SPLITS, settings.num_samples))
  if divisor != 1:
    info['inception_divisor'] = divisor  # test-only reduced network
  return Metric('inception', *config_lib.METRIC_VALUES['inception'], compute,
                info)
