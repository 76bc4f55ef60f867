"""The one exception family that command-line tools show as a single line."""

import errno
import os
from typing import Iterator, Optional


class UserError(ValueError):
  """A request that cannot be served as given: a bad flag, config, path or file.

  Its message names the offending field or path and says what to do. The
  command-line tools print it as `error: <message>` and exit with
  `exit_status` (2: bad input); anything else that escapes is a bug in this
  package.
  """
  exit_status = 2


class FaultError(UserError):
  """The machine, not the request, failed: a full disk, a peer process that
  vanished, memory that ran out. One line as for bad input, exit status 1;
  the same command, rerun once the cause is gone, resumes the run."""
  exit_status = 1


class ModelError(UserError):
  """A model that cannot be loaded or sampled as asked.

  The one type `diffusion_distillation.load` and a loaded model's `sample`
  raise for a wrong combination (a student never distilled, labels for an
  unconditional model, a checkpoint that does not fit its config, ...); the
  message says what is available.
  """


def first_line(error: BaseException) -> str:
  """An exception's message in one line (its type's name if it has none),
  for the one-line errors of things that fail below us."""
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__


# What a disk says when it cannot take a write, and what a user should do.
_DISK_ERRORS = {
    errno.ENOSPC: ('no space left on device', 'free space'),
    errno.EDQUOT: ('disk quota exceeded', 'free space'),
    errno.EROFS: ('read-only file system', 'make it writable'),
    errno.EACCES: ('permission denied', 'fix its permissions'),
    errno.EPERM: ('operation not permitted', 'fix its permissions'),
}
_DISK_TEXTS = {os.strerror(code): code for code in _DISK_ERRORS}


def causes(error: Optional[BaseException]) -> Iterator[BaseException]:
  """`error`, then the exceptions it was raised from or during, in turn."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def disk_error(error: BaseException) -> Optional[tuple[str, str]]:
  """(what, fix) when `error` or one it was raised from is a write the disk
  refused (full, quota, read-only, permissions), e.g. ('no space left on
  device', 'free space'); else None. TensorStore (orbax's arrays) reports
  the errno only in its message text."""
  for cause in causes(error):
    code = getattr(cause, 'errno', None)
    if code in _DISK_ERRORS:
      return _DISK_ERRORS[code]
    for text, text_code in _DISK_TEXTS.items():
      if text in str(cause):
        return _DISK_ERRORS[text_code]
  return None


def out_of_memory(error: BaseException) -> bool:
  """Whether `error`, or one it was raised from, is an allocation that
  failed and that Python saw: numpy's MemoryError, or XLA's RESOURCE_EXHAUSTED
  while compiling or running a program. (The kernel's out-of-memory killer,
  or an allocation failing inside native code, ends the process first.)"""
  return any(isinstance(cause, MemoryError) or (
      'RESOURCE_EXHAUSTED' in str(cause) and 'memory' in str(cause).lower())
             for cause in causes(error))
