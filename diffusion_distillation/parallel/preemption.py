"""Clean stops: SIGTERM (preemption) and Ctrl-C ask for a checkpoint.

Within `handling()` (training), SIGTERM and the first Ctrl-C (SIGINT) only
set a flag; the training loop asks `Poll` after every compiled call (agreed
across processes every few seconds), saves a checkpoint and raises
`Preempted` with the line the command ends with (`stop_message`). A thread
sees each signal as it comes, also inside a long compiled call (where Python
runs no handler until the call returns): it says at once what will happen,
and a second Ctrl-C ends the process at once, without that checkpoint
(`os._exit`: a KeyboardInterrupt can land in a garbage-collector callback,
where Python prints and drops it, and the run would go on); the checkpoints
written before stay, and a rerun resumes from the last one.
A process started with SIGINT ignored (a background job of a script) keeps
ignoring it. Outside `handling()` the previous handlers apply.
"""

import contextlib
import os
import signal
import sys
import threading
import time

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
  if not _WATCHED:  # else `_SignalWatcher` said it when the signal came
    _say_stopping(signum)


def _say_stopping(signum: int):
  if signum == signal.SIGINT:
    logging.warning('Ctrl-C: saving a checkpoint when the current compiled '
                    'call of updates ends; press Ctrl-C again to stop at '
                    'once without it.')
  else:
    logging.warning('%s received: saving a checkpoint when the current '
                    'compiled call of updates ends.',
                    signal.Signals(signum).name)


_WATCHED = False  # a _SignalWatcher sees the signals as they come


class _SignalWatcher(threading.Thread):
  """Sees each stop signal as it arrives (`signal.set_wakeup_fd`), also
  while the main thread is inside a compiled call, where Python runs no
  handler until the call returns (seconds, or minutes with many substeps
  or while compiling): says at once what will happen, and a second Ctrl-C
  ends the process from here."""

  def __init__(self, read_fd: int):
    super().__init__(name='dd-signals', daemon=True)
    self._fd, self._sigints, self._said = read_fd, 0, False

  def run(self):
    try:
      while data := os.read(self._fd, 64):  # b'': the block has ended
        self._seen(data)
    finally:
      os.close(self._fd)

  def _seen(self, data: bytes):
    for signum in data:
      if signum not in _STOP_SIGNALS:
        continue
      self._sigints += signum == signal.SIGINT
      if self._sigints >= 2:
        _on_second_sigint(signum, None)
      if not self._said:
        self._said = True
        _say_stopping(signum)


@contextlib.contextmanager
def _watching():
  """A _SignalWatcher while the block runs (main thread only)."""
  global _WATCHED
  read_fd, write_fd = os.pipe()
  os.set_blocking(write_fd, False)
  previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
  _SignalWatcher(read_fd).start()
  _WATCHED = True
  try:
    yield
  finally:
    _WATCHED = False
    signal.set_wakeup_fd(previous)
    os.close(write_fd)  # the watcher reads the end and stops


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
    with _watching():
      yield
  finally:
    for signum, handler in previous.items():
      if handler is not None:  # None: set outside Python; cannot restore
        signal.signal(signum, handler)


def stop_signal():
  """The signal that asked to stop (signal.Signals), or None."""
  return _SIGNAL


def preempted() -> bool:
  """Whether this process was asked to stop."""
  return _SIGNAL is not None


class Poll:
  """After each compiled call: stop now? save now (checkpoint_every_secs)?

  The answers must be the same on every process (the checkpoint that follows
  is collective), so a multi-process run agrees on them in one
  `process_allgather`, but only every POLL_S seconds or so rather than after
  every call: process 0 sets the number of calls until the next poll from
  its own pace, and that number travels with the answers. A stop request
  then waits at most about POLL_S seconds. One process decides alone, after
  every call.
  """

  POLL_S = 5.

  def __init__(self, save_every_secs: float):
    self.save_every_secs = save_every_secs
    self.last_save = time.time()
    self.calls, self.until_poll = 1, 1  # calls between polls; left
    self.polled = time.monotonic()

  def saved(self):
    self.last_save = time.time()

  def after_call(self) -> tuple[bool, bool]:
    """(stop, save): agreed on every process."""
    save_due = time.time() - self.last_save > self.save_every_secs
    if jax.process_count() == 1:
      return preempted(), save_due
    self.until_poll -= 1
    if self.until_poll > 0:
      return False, False
    now = time.monotonic()
    pace = max(now - self.polled, 1e-3) / self.calls  # seconds per call
    proposal = max(1, int(self.POLL_S / pace))
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    answers = np.asarray(multihost_utils.process_allgather(
        np.asarray([preempted(), save_due, proposal], np.int64)))
    self.calls = self.until_poll = int(answers[0, 2])  # process 0's pace
    self.polled = now
    return bool(answers[:, 0].any()), bool(answers[0, 1])


def stop_agreed() -> bool:
  """Whether any process was asked to stop, on every process (a collective
  on all of them): between stages, where `Poll` does not ask."""
  if jax.process_count() == 1:
    return preempted()
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.asarray(multihost_utils.process_allgather(
      np.asarray(preempted(), np.int32))).any())


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
