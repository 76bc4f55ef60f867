"""Fingerprints that tie a metric cache to the weights it was computed with."""

import hashlib

from flax import traverse_util
import jax
import numpy as np


def params_fingerprint(params, *, with_shapes: bool = True) -> str:
  """16 hex digits of SHA-256 over a parameter tree's names and float32 values.

  Leaves are hashed in sorted `a/b/c` name order. `with_shapes` also hashes
  each leaf's shape (the Inception weights' fingerprint); the digits
  classifier's fingerprint omits them. Both forms key existing cache files,
  so neither may change.
  """
  digest = hashlib.sha256()
  flat = traverse_util.flatten_dict(jax.device_get(params), sep='/')
  for name in sorted(flat):
    value = np.ascontiguousarray(flat[name], np.float32)
    digest.update((f'{name}:{value.shape}' if with_shapes else name).encode())
    digest.update(value.tobytes())
  return digest.hexdigest()[:16]
