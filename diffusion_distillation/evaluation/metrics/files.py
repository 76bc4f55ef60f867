"""Atomic `.npz` writes, so a reader (or a crash) never sees half a file."""

import os
import tempfile

import numpy as np


def atomic_savez(path, arrays) -> str:
  """`np.savez(path, **arrays)` via a temp file in the same directory.

  `os.replace` is atomic within a file system. mkstemp creates the file
  private to its owner; it is opened up to the usual 0644 so caches can be
  shared.
  """
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-', suffix='.npz')
  try:
    with os.fdopen(fd, 'wb') as f:
      np.savez(f, **arrays)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path
