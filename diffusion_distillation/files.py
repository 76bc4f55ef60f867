"""Files written whole or not at all: a temporary name, then a rename.

Every output a user keeps (exports, samples, grids, results, caches) is
written through `replacing`: a reader, a crash or Ctrl-C never leaves half a
file under the final name, and no temporary file survives a failure. Local
renames are atomic within a file system; an object store (gs://) makes an
object visible only once it is complete, so it is written in place there.
"""

import contextlib
import io
import os
import uuid

from etils import epath
import numpy as np

from diffusion_distillation import paths

# Temporary files start with this, so that a listing shows what they are.
TEMP_PREFIX = '.partial-'


@contextlib.contextmanager
def named_errors(path):
  """An OSError of the block without a file name (a write to a full disk)
  gets `path`'s, for the command's one line."""
  try:
    yield
  except OSError as e:
    if not e.filename:
      e.filename = os.fspath(path)
    raise


@contextlib.contextmanager
def replacing(path):
  """Yields a temporary path beside `path`; renames it onto `path` if the
  block succeeds, deletes it if the block fails (any exception, Ctrl-C too).
  An OSError names `path` (`named_errors`).
  """
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if not paths.is_local(path):
    yield path
    return
  tmp = path.parent / f'{TEMP_PREFIX}{uuid.uuid4().hex[:8]}-{path.name}'
  try:
    with named_errors(path):
      yield tmp
      os.chmod(tmp, 0o644)
      tmp.replace(path)
  except BaseException:
    if tmp.exists():
      tmp.unlink()
    raise


def write_bytes(path, data: bytes) -> epath.Path:
  """`path.write_bytes(data)`, whole or not at all."""
  with replacing(path) as tmp:
    tmp.write_bytes(data)
  return epath.Path(path)


def write_text(path, text: str) -> epath.Path:
  """`path.write_text(text)`, whole or not at all."""
  return write_bytes(path, text.encode())


def savez(path, arrays: dict) -> epath.Path:
  """`np.savez(path, **arrays)`, whole or not at all."""
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  return write_bytes(path, buffer.getvalue())
