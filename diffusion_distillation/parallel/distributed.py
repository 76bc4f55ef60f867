"""Multi-process start-up, and the agreements between processes the pipeline needs.

Every process of a multi-process run executes the same Python program. Two
kinds of steps must happen on all of them in the same order: the compiled
programs (their collectives span the processes) and orbax's checkpoint
operations (opening a `CheckpointManager`, saving and restoring synchronize the
processes). So a decision that selects between such steps, e.g. "is this stage
already finished?", must be the same on every process even while process 0 is
writing to the workdir that the others are looking at: `agree` makes process 0's
answer everyone's. Files that should exist once (config.json, sample grids,
TensorBoard events) are written by process 0 only; `barrier` orders such a
write after the other processes' reads.

Off TPU, `initialize` joins the processes given by `--coordinator_address`,
`--num_processes` and `--process_id` (several processes on one machine, GPU
hosts, or CPU hosts); on CPU, their collectives go through gloo over TCP.
"""

import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_distillation.errors import UserError

CPU_COLLECTIVES = 'gloo'


def _on_multihost_tpu() -> bool:
  """A TPU slice of several hosts lists them in TPU_WORKER_HOSTNAMES."""
  return ',' in os.environ.get('TPU_WORKER_HOSTNAMES', '')


def _enable_cpu_collectives():
  """Cross-process programs on CPU need a collectives library (gloo).

  JAX >= 0.5 uses gloo by default; older versions default to none, and then
  every cross-process computation on CPU fails. An explicit choice (e.g.
  JAX_CPU_COLLECTIVES_IMPLEMENTATION=mpi) is kept. Harmless on GPU and TPU,
  whose collectives do not go through the CPU client.
  """
  current = getattr(jax.config, 'jax_cpu_collectives_implementation', None)
  if current in (None, 'none'):
    jax.config.update('jax_cpu_collectives_implementation', CPU_COLLECTIVES)


def initialize(coordinator_address=None, num_processes=None, process_id=None):
  """Calls `jax.distributed.initialize` when the run spans several processes.

  Must run before anything touches a device (e.g. `jax.devices()`).
  Explicit arguments (several processes on one machine, GPU or CPU hosts) win;
  on a multi-host TPU slice, or with JAX_COORDINATOR_ADDRESS set, JAX finds its
  peers itself. A single process needs nothing.
  """
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise UserError('--coordinator_address needs --num_processes and '
                      '--process_id')
    _enable_cpu_collectives()
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes,
                               process_id=process_id)
  elif _on_multihost_tpu() or os.environ.get('JAX_COORDINATOR_ADDRESS'):
    _enable_cpu_collectives()
    jax.distributed.initialize()
  else:
    return
  logging.info('process %d of %d, %d local / %d global devices',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  if jax.default_backend() == 'cpu' and jax.process_count() > 1:
    _connect_cpu_collectives()


def _connect_cpu_collectives():
  """Opens the gloo connections while the processes are still in step.

  XLA:CPU connects the processes of a group of devices on that group's first
  collective, and gives up when one process arrives more than 30 seconds after
  another ("Gloo context initialization failed: DEADLINE_EXCEEDED:
  GetKeyValue() timed out"); once connected, a collective waits as long as
  needed. The processes have just met in `jax.distributed.initialize`, so
  running each kind of collective the pipeline uses now, over all devices,
  makes later skews (one process compiling slower, process 0 writing files)
  harmless.
  """
  mesh = jax.make_mesh((jax.device_count(),), ('all',))
  ones = jax.make_array_from_process_local_data(
      jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('all')),
      np.ones(jax.local_device_count(), np.float32))
  total = jax.jit(jnp.sum, out_shardings=jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec()))(ones)
  if float(total.addressable_data(0)) != jax.device_count():
    raise RuntimeError('cross-process sum over all devices is wrong: '
                       f'{float(total.addressable_data(0))} != '
                       f'{jax.device_count()}')
  barrier('distributed.initialize')  # process_allgather, orbax's barriers
  agree(True)  # broadcast_one_to_all


def is_primary() -> bool:
  """Whether this process writes the files that exist once per run."""
  return jax.process_index() == 0


def barrier(name: str):
  """Waits until every process has reached `barrier(name)` (same name on all)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def agree(value: bool) -> bool:
  """Process 0's `value`, on every process (call it on all of them)."""
  if jax.process_count() == 1:
    return bool(value)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(multihost_utils.broadcast_one_to_all(
      np.asarray(int(bool(value)), np.int32)))
