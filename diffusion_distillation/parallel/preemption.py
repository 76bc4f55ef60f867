"""Clean stops: SIGTERM (preemption) and Ctrl-C ask for a checkpoint.

Within `handling()` (training), SIGTERM and the first Ctrl-C (SIGINT) only
set a flag; the training loop checks `preempted()` after every update, saves
a checkpoint and raises `Preempted` with the line the command ends with
(`stop_message`). A second Ctrl-C ends the process at once, without that
checkpoint (`os._exit`: a KeyboardInterrupt can land in a garbage-collector
callback, where Python prints and drops it, and the run would go on); the
checkpoints written before stay, and a rerun resumes from the last one.
A process started with SIGINT ignored (a background job of a script) keeps
ignoring it. Outside `handling()` the previous handlers apply.
"""

import contextlib
import os
import signal
import sys
import threading

from absl import logging
import jax
import numpy as np

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# The first signal that asked to stop, as a signal.Signals; None: none yet.
_SIGNAL = None


def _on_signal(signum, frame):
  del frame
  global _SIGNAL
  if _SIGNAL is None:
    _SIGNAL = signal.Signals(signum)
  if signum == signal.SIGINT:
    signal.signal(signal.SIGINT, _on_second_sigint)
    logging.warning('Ctrl-C: saving a checkpoint after this update; press '
                    'Ctrl-C again to stop at once without it.')
  else:
    logging.warning('%s received: saving a checkpoint after this update.',
                    signal.Signals(signum).name)


def _on_second_sigint(signum, frame):
  del signum, frame
  sys.stdout.flush()
  sys.stderr.write('interrupted: stopped at once, without a checkpoint of the '
                   'updates since the last one; rerun the same command to '
                   'resume from it\n')
  sys.stderr.flush()
  os._exit(130)  # pylint: disable=protected-access


def install_handler():
  """SIGTERM and SIGINT save a checkpoint and exit; rerun to resume.

  Forgets an earlier stop request. Prefer `handling()`, which also puts the
  previous handlers back.
  """
  reset()
  for signum in _STOP_SIGNALS:
    if signal.getsignal(signum) is not signal.SIG_IGN or signum != signal.SIGINT:
      signal.signal(signum, _on_signal)


def reset():
  """Forgets a stop request (a new run in the same process)."""
  global _SIGNAL
  _SIGNAL = None


@contextlib.contextmanager
def handling():
  """Within: SIGTERM and a first Ctrl-C ask for a checkpoint (see module).

  Signal handlers can only be set in the main thread; elsewhere this does
  nothing.
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = {signum: signal.getsignal(signum) for signum in _STOP_SIGNALS}
  install_handler()
  try:
    yield
  finally:
    for signum, handler in previous.items():
      if handler is not None:  # None: set outside Python; cannot restore
        signal.signal(signum, handler)


def stop_signal():
  """The signal that asked to stop (signal.Signals), or None."""
  return _SIGNAL


def preempted() -> bool:
  """Whether any process was asked to stop (agreed across processes)."""
  if jax.process_count() == 1:
    return _SIGNAL is not None
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  flags = multihost_utils.process_allgather(np.asarray([_SIGNAL is not None]))
  return bool(np.any(flags))


def stop_message(stage: str, step: int) -> str:
  """The line a stopped run ends with: `interrupted: ...` after Ctrl-C."""
  reason = 'interrupted' if _SIGNAL == signal.SIGINT else 'preempted'
  return (f'{reason}: checkpoint saved at {stage} step {step}; rerun the '
          'same command to resume')


class Preempted(SystemExit):
  """Raised after a preemption (or Ctrl-C) checkpoint is written.

  Its message is the command's last line; `exit_status` is 130 after Ctrl-C
  (the shell's convention for SIGINT) and 1 otherwise.
  """

  def __init__(self, message: str):
    super().__init__(message)
    self.exit_status = 130 if _SIGNAL == signal.SIGINT else 1
