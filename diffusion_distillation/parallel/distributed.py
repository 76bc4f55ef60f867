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
import errno
import fcntl
import json
import math
import os
import socket
import sys
import tempfile
import threading
import time
from typing import Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_distillation.errors import first_line
from diffusion_distillation.errors import UserError
from diffusion_distillation.parallel import coordinator
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
                'started, with the same coordinator address and its own '
                'process id')
  timer = threading.Timer(process_timeout, watchdog.exit_now,
                          args=(2, not_joined))
  timer.daemon = True
  timer.start()
  try:
    with _runtime_hooks(grace=process_timeout + 15):
      jax.distributed.initialize(
          coordinator_address=coordinator_address,
          num_processes=num_processes, process_id=process_id,
          initialization_timeout=later, heartbeat_timeout_seconds=later)
  except UserError:
    raise
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


class _Runtime:
  """JAX's native module as `jax.distributed` sees it, except that process
  0's coordination service runs in a process of its own
  (parallel/coordinator.py), after a check that its port is free (gRPC's
  failure to bind a port in use crashes the process), and that no other
  process on this host took the same process id (the service aborts one of
  the two in C++)."""

  def __init__(self, native, grace: float):
    self._native, self._grace = native, grace

  def __getattr__(self, name):
    return getattr(self._native, name)

  def get_distributed_runtime_service(self, address, num_nodes, **kwargs):
    port = int(address.rsplit(':', 1)[1])
    _claim_process_id(port, 0)
    _check_port_free(port)
    return coordinator.ServiceProcess(address, self._grace,
                                      num_nodes=num_nodes, **kwargs)

  def get_distributed_runtime_client(self, address, node_id, **kwargs):
    port = int(address.rsplit(':', 1)[1])
    _claim_process_id(port, node_id)
    if node_id:  # on process 0's host: not the earlier run's service
      coordinator.wait_lingering(port, self._grace)
    return self._native.get_distributed_runtime_client(address, node_id,
                                                       **kwargs)


@contextlib.contextmanager
def _runtime_hooks(grace: float):
  """`_Runtime` in place of jax._src.distributed's native module, while
  `jax.distributed.initialize` runs (a JAX that moved it: as it is)."""
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  native = getattr(jax_distributed, '_jax', None)
  if native is None:
    yield
    return
  jax_distributed._jax = _Runtime(native, grace)  # pylint: disable=protected-access
  try:
    yield
  finally:
    jax_distributed._jax = native  # pylint: disable=protected-access


_claimed = {}  # (port, process id) -> the open lock file, for our lifetime


def _claim_process_id(port: int, process_id: int):
  """Raises UserError if a live process on this host has claimed the same
  process id of a run coordinated on `port` (an flock, released at exit)."""
  if (port, process_id) in _claimed:
    return
  path = os.path.join(tempfile.gettempdir(), f'diffusion_distillation_'
                      f'port{port}_process{process_id}.lock')
  lock = open(path, 'a')  # pylint: disable=consider-using-with
  try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    lock.close()
    raise UserError(f'another process on this host was started as process '
                    f'{process_id} of the run coordinated on port {port}: '
                    'give each process its own --process_id') from None
  _claimed[port, process_id] = lock


def _check_port_free(port: int):
  """Raises UserError if this host's `port` is taken (before the service
  binds it: gRPC's failure to bind ends the process without a word). The
  service an earlier run left lingering there is ended first."""
  if not _port_free(port) and coordinator.end_lingering(port):
    deadline = time.monotonic() + 10
    while not _port_free(port) and time.monotonic() < deadline:
      time.sleep(0.1)
  if not _port_free(port):
    raise UserError(
        f'the coordinator port {port} is already in use on this host: '
        'another program holds it; pick a free port for '
        '--coordinator_address')


def _port_free(port: int) -> bool:
  for family, host in ((socket.AF_INET6, '::'), (socket.AF_INET, '')):
    try:
      probe = socket.socket(family, socket.SOCK_STREAM)
    except OSError:  # no IPv6 on this host
      continue
    with probe:
      probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
      try:
        probe.bind((host, port))
      except OSError as e:
        if e.errno == errno.EADDRINUSE:
          return False
  return True


def add_xla_flag(flag: str):
  """Adds `flag` to XLA_FLAGS, which XLA reads once, when JAX starts its
  first backend: call it before anything touches a device."""
  flags = os.environ.get('XLA_FLAGS', '').split()
  if flag not in flags:
    os.environ['XLA_FLAGS'] = ' '.join([*flags, flag])


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


def gather_texts(text: str) -> list[str]:
  """Every process's `text`, in process order (call it on all of them)."""
  if jax.process_count() == 1:
    return [text]
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  data = np.frombuffer(text.encode(), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.int32(data.size)))
  padded = np.zeros(max(1, int(sizes.max())), np.uint8)
  padded[:data.size] = data
  rows = np.asarray(multihost_utils.process_allgather(padded))
  return [bytes(row[:size]).decode() for row, size in zip(rows, sizes)]


def first_problem(problem: Optional[str]) -> Optional[str]:
  """The first process's problem (None: it has none), on every process, so
  that all stop alike, with a line that says which process had it."""
  texts = gather_texts(problem or '')
  for index, text in enumerate(texts):
    if text:
      return text if len(texts) == 1 else (
          f'{text} (on process {index} of {len(texts)})')
  return None


def check_same_run(fields: dict, workdir: str):
  """Raises UserError on every process unless all of them run the same
  config (`fields`: flat, JSON values) in the same workdir.

  Processes started with different flags would each train their own model
  and take turns writing one workdir: different batch sizes both "finish",
  different workdirs hang in the first save's barrier.
  """
  texts = gather_texts(json.dumps([workdir, fields], sort_keys=True))
  (first_workdir, first), fix = json.loads(texts[0]), (
      'start every process with the same command')
  for index, text in enumerate(texts[1:], 1):
    other_workdir, other = json.loads(text)
    if other_workdir != first_workdir:
      raise UserError(f'process {index} runs in --workdir={other_workdir} but '
                      f'process 0 in --workdir={first_workdir}; {fix}')
    for field in sorted(set(first) | set(other)):
      if first.get(field) != other.get(field):
        raise UserError(
            f'process {index} runs another config than process 0: '
            f'config.{field} is {other.get(field)!r} there but '
            f'{first.get(field)!r} on process 0; {fix}')
