"""Multi-process start-up: join the JAX cluster before any device is touched."""

import os

from absl import logging
import jax


def _on_multihost_tpu() -> bool:
  """A TPU slice of several hosts lists them in TPU_WORKER_HOSTNAMES."""
  return ',' in os.environ.get('TPU_WORKER_HOSTNAMES', '')


def initialize(coordinator_address=None, num_processes=None, process_id=None):
  """Calls `jax.distributed.initialize` when the run spans several processes.

  Explicit arguments (e.g. several processes on one machine, or GPU hosts)
  win; on a multi-host TPU slice JAX finds its peers itself. A single process
  needs nothing.
  """
  if coordinator_address:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes,
                               process_id=process_id)
  elif _on_multihost_tpu() or os.environ.get('JAX_COORDINATOR_ADDRESS'):
    jax.distributed.initialize()
  else:
    return
  logging.info('process %d of %d, %d local / %d global devices',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
