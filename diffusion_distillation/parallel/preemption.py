"""Preemption: SIGTERM asks for a checkpoint; every process agrees to stop."""

import signal

from absl import logging
import jax
import numpy as np

_PREEMPTED = False


def _on_sigterm(signum, frame):
  del signum, frame
  global _PREEMPTED
  _PREEMPTED = True
  logging.warning('SIGTERM received: saving a checkpoint after this update.')


def install_handler():
  """SIGTERM (preemption) saves a checkpoint and exits; rerun to resume."""
  signal.signal(signal.SIGTERM, _on_sigterm)


def preempted() -> bool:
  """Whether any process was asked to stop (agreed across processes)."""
  if jax.process_count() == 1:
    return _PREEMPTED
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  flags = multihost_utils.process_allgather(np.asarray([_PREEMPTED]))
  return bool(np.any(flags))


class Preempted(SystemExit):
  """Raised after a preemption checkpoint is written."""
