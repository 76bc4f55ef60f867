"""The FID Inception weights, downloaded once into the metric cache.

When no weights file is given, `ensure_weights` looks for
`<cache_dir>/inception/classify_image_graph_def.pb`; if it is missing it
downloads `inception.INCEPTION_URL` (`$DD_INCEPTION_URL` overrides it, e.g. a
mirror), extracts the graph from the archive, checks it with the loader's own
checks (every tensor the network needs, with its shape) and only then moves
it into place atomically, so a failed or interrupted download never leaves a
file that a later run would trust. Offline, it stops in one line giving the
exact path to put the file at.

No checksum of the archive is published by its host; the sha256 of the graph
that was checked is logged, to compare with other copies.
"""

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request

from absl import logging

from diffusion_distillation.errors import UserError
from diffusion_distillation.evaluation.metrics import inception

URL_ENV = 'DD_INCEPTION_URL'
_TIMEOUT_SECS = 60


class WeightsDownloadError(UserError):
  """The Inception weights are not cached and could not be downloaded."""


def cached_path(cache_dir: str) -> str:
  """Where the downloaded graph lives (and where to put it by hand)."""
  return os.path.join(cache_dir, 'inception', inception.GRAPH_FILENAME)


def _offline_message(url: str, path: str, reason) -> str:
  return (f'could not download the Inception weights from {url} ({reason}). '
          f'Put {inception.GRAPH_FILENAME} at {path} (from '
          f'{inception.INCEPTION_URL}: `tar xzf inception-2015-12-05.tgz '
          f'{inception.GRAPH_FILENAME}`), or pass --inception_path')


def _fetch(url: str, path: str) -> bytes:
  try:
    with urllib.request.urlopen(url, timeout=_TIMEOUT_SECS) as response:
      return response.read()
  except (urllib.error.URLError, OSError, ValueError) as e:
    raise WeightsDownloadError(
        _offline_message(url, path, getattr(e, 'reason', e))) from None


def _extract_graph(archive: bytes, url: str, out) -> None:
  """Copies the graph member of the `.tgz` bytes into the file `out`."""
  try:
    with tarfile.open(fileobj=io.BytesIO(archive), mode='r:*') as tar:
      member = next((m for m in tar.getmembers() if m.isfile() and
                     os.path.basename(m.name) == inception.GRAPH_FILENAME),
                    None)
      if member is None:
        raise WeightsDownloadError(
            f'{url} holds no {inception.GRAPH_FILENAME}; is it '
            f'inception-2015-12-05.tgz?')
      shutil.copyfileobj(tar.extractfile(member), out)
  except tarfile.TarError as e:
    raise WeightsDownloadError(f'{url} is not a .tgz archive ({e})') from None


def ensure_weights(cache_dir: str, url: str | None = None,
                   divisor: int = 1) -> str:
  """The cached graph's path, downloading and checking it the first time.

  Args:
    cache_dir: the metric cache directory (`paths.default_cache_dir()`).
    url: the archive; default `$DD_INCEPTION_URL`, else INCEPTION_URL.
    divisor: test-only reduced width the graph is checked against.

  Raises:
    WeightsDownloadError: offline, or the download is not the archive.
    InceptionWeightsError: the graph lacks a tensor or has a wrong shape.
  """
  path = cached_path(cache_dir)
  if os.path.exists(path):
    return path
  url = url or os.environ.get(URL_ENV) or inception.INCEPTION_URL
  logging.info('downloading the Inception weights from %s', url)
  archive = _fetch(url, path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.download-')
  try:
    with os.fdopen(fd, 'wb') as f:
      _extract_graph(archive, url, f)
    inception.params_from_arrays(inception.read_graph_arrays(tmp), divisor,
                                 url)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  with open(path, 'rb') as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  logging.info('Inception weights checked and cached at %s (sha256 %s)',
               path, digest)
  return path
