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

`initialize` joins the processes of the cluster the job runs in (SLURM's
`srun`, Open MPI, a TPU pod slice: JAX's own detection), or those given by
`--coordinator_address`, `--num_processes` and `--process_id` (several
processes on one machine, GPU or CPU hosts without a scheduler); on CPU,
their collectives go through gloo over TCP. From then on an error on any
process ends every process (parallel/watchdog.py).
"""

import contextlib
import math
import os
import sys
import tempfile
import threading
from typing import Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_distillation.errors import first_line
from diffusion_distillation.errors import UserError
from diffusion_distillation.parallel import watchdog

CPU_COLLECTIVES = 'gloo'
PROCESS_TIMEOUT_S = 60.  # a silent process ends the run after this long
ACCELERATOR_ENV = 'DD_ACCELERATOR'
_JAX_EXTRA = {'cuda': 'cuda12', 'tpu': 'tpu', 'rocm': 'rocm'}


def detected_cluster() -> Optional[str]:
  """The cluster JAX finds this process in: 'slurm' (inside `srun`),
  'ompi' (`mpirun`), 'gce_tpu' / 'gke_tpu' (a TPU VM or pod slice), 'k8s',
  ... (JAX's own detectors, the ones `jax.distributed.initialize()` asks);
  'env' for JAX_COORDINATOR_ADDRESS; None: a lone process."""
  if os.environ.get('JAX_COORDINATOR_ADDRESS'):
    return 'env'
  try:
    from jax._src import clusters  # pylint: disable=g-import-not-at-top
    detectors = clusters.ClusterEnv._cluster_types  # pylint: disable=protected-access
  except (ImportError, AttributeError):  # a JAX that moved them: flags only
    return None
  for env in detectors:
    if not env.opt_in_only_method and env.is_env_present():
      return env.name or env.__name__
  return None


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


def initialize(coordinator_address=None, num_processes=None, process_id=None,
               *, process_timeout: float = PROCESS_TIMEOUT_S):
  """Joins the processes of a multi-process run (`jax.distributed`).

  Must run before anything touches a device (e.g. `jax.devices()`).
  Explicit arguments (`--coordinator_address`, `--num_processes`,
  `--process_id`) win; else the cluster JAX detects (`detected_cluster`:
  SLURM, Open MPI, TPU pods, JAX_COORDINATOR_ADDRESS, ...) gives them. A lone
  process joins nothing. Then a watchdog (parallel/watchdog.py) ends every
  process within about a second of an error on one, and within
  `process_timeout` seconds of one vanishing; a process that has not joined
  within `process_timeout` seconds ends the others too. Returns the cluster
  kind, or None.
  """
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise UserError('--coordinator_address needs --num_processes and '
                      '--process_id')
    kind = 'flags'
  else:
    kind = detected_cluster()
    if kind is None:
      return None
  _enable_cpu_collectives()
  # JAX's own verdicts (a C++ abort) must come after ours.
  later = int(math.ceil(process_timeout)) + 60
  not_joined = (f'error: the processes of this run ({kind}) did not all join '
                f'within {process_timeout:g} s; check that every process was '
                'started, with the same coordinator address')
  timer = threading.Timer(process_timeout, watchdog.exit_now,
                          args=(2, not_joined))
  timer.daemon = True
  timer.start()
  try:
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes,
        process_id=process_id, initialization_timeout=later,
        heartbeat_timeout_seconds=later)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f'{not_joined[len("error: "):]} ({first_line(e)})'
                    ) from None
  finally:
    timer.cancel()
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  watchdog.start(jax_distributed.global_state.client, jax.process_index(),
                 jax.process_count(), process_timeout)
  logging.info('process %d of %d, %d local / %d global devices',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  if jax.default_backend() == 'cpu' and jax.process_count() > 1:
    _connect_cpu_collectives()
  return kind


def describe_devices(cluster: Optional[str]) -> str:
  """One line: backend, processes, devices, and the cluster found."""
  return (f'{jax.default_backend()} backend: {jax.process_count()} '
          f'process{"es" if jax.process_count() > 1 else ""}, '
          f'{jax.local_device_count()} local / {jax.device_count()} global '
          f'devices ({jax.devices()[0].device_kind}); cluster: '
          f'{cluster or "none (one process)"}')


def check_accelerator():
  """Stops in one line when JAX cannot use the accelerator that
  `DD_ACCELERATOR` names (launch/run.sh sets it, and JAX_PLATFORMS, to the
  hardware it found): without this, a broken CUDA install trains a full-size
  model at CPU speed, or fails in a traceback."""
  wanted = os.environ.get(ACCELERATOR_ENV, '')
  platform = wanted.rstrip('0123456789').lower()  # cuda12 -> cuda
  extra = _JAX_EXTRA.get(platform, platform)
  fix = (f"install JAX for it (pip install 'jax[{extra}]'), check the "
         f'driver (nvidia-smi), or set {ACCELERATOR_ENV}=cpu to run on the '
         'CPU')
  try:
    backend = jax.default_backend()
  except Exception as e:  # pylint: disable=broad-except
    # JAX_PLATFORMS names a backend that fails to start, or (JAX 0.10: an
    # AssertionError) one that is not installed.
    platforms = os.environ.get('JAX_PLATFORMS', '')
    raise UserError(f'JAX cannot start the {platforms or wanted} backend '
                    f'({first_line(e)}); {fix}') from None
  if platform not in ('', 'cpu') and backend == 'cpu':
    raise UserError(f'{ACCELERATOR_ENV}={wanted} (the hardware launch/run.sh '
                    f'found) but JAX sees only CPU devices; {fix}')


@contextlib.contextmanager
def _without_gloo_lines():
  """Drops the `[Gloo] Rank N is connected to ...` lines that gloo prints
  (from C++, to the process's stdout) when it connects; the rest stays."""
  sys.stdout.flush()
  saved = os.dup(1)
  with tempfile.TemporaryFile('w+') as capture:
    os.dup2(capture.fileno(), 1)
    try:
      yield
    finally:
      os.dup2(saved, 1)
      os.close(saved)
      capture.seek(0)
      sys.stdout.write(''.join(line for line in capture
                               if not line.startswith('[Gloo]')))
      sys.stdout.flush()


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
  with _without_gloo_lines():
    _sum_over_all_devices()
    barrier('distributed.initialize')  # process_allgather, orbax's barriers
    agree(True)  # broadcast_one_to_all


def _sum_over_all_devices():
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
