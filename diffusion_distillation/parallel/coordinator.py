"""The coordination service of a multi-process run, in a process of its own.

JAX runs the service (the key-value store, barriers, heartbeats) inside
process 0. When process 0 dies or freezes, every other process's JAX client
finds the service gone and aborts with a C++ stack trace (the callback JAX
offers instead cannot be called from Python: `std::bad_cast`), before our
watchdog can say what happened. So process 0 starts the service in a small
child process instead (`ServiceProcess`), which outlives a killed or frozen
process 0 by `grace` seconds: long enough for the other processes'
watchdogs to say "process 0 ... stopped responding" in one line, as for any
other process.

The child holds the read end of a pipe whose write end only process 0 has:
process 0's end, however it comes (SIGKILL, out of memory, one of our
one-line errors), is end-of-file. A clean shutdown writes `stop`. The child
ignores the signals a terminal or a scheduler sends to the run's processes
(Ctrl-C, SIGTERM for preemption): the others still need the service while
they save a checkpoint. While it lingers it leaves its process id in a file,
so that a new run on the same port ends it (`end_lingering`) rather than
waiting for the port.

    python -m diffusion_distillation.parallel.coordinator '{"address": ...}'
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from diffusion_distillation.errors import UserError

_READY = 'ready'
_START_TIMEOUT_S = 60.


class ServiceProcess:
  """Stands for JAX's service object: `shutdown()` is all JAX calls."""

  def __init__(self, address: str, grace: float, **service_args):
    spec = json.dumps({'address': address, 'grace': grace,
                       'service_args': service_args})
    # Its log goes to a file: a pipe nobody reads would, once full, block
    # the service in the middle of a long run.
    self._log = tempfile.TemporaryFile('w+')
    self._child = subprocess.Popen(
        [sys.executable, '-m', __name__, spec], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=self._log, text=True,
        start_new_session=True)  # no Ctrl-C from the terminal
    ready = self._child.stdout.readline().strip()
    if ready != _READY:
      self._child.kill()
      self._child.wait(timeout=_START_TIMEOUT_S)
      self._log.seek(0)
      last = (self._log.read().strip().splitlines() or ['it exited'])[-1]
      raise UserError(f'the coordination service of this run could not start '
                      f'on {address}: {last}')

  def shutdown(self):
    try:
      self._child.stdin.write('stop\n')
      self._child.stdin.flush()
      self._child.wait(timeout=_START_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
      self._child.kill()
    self._log.close()


def _lingering_file(port: int) -> str:
  return os.path.join(tempfile.gettempdir(), 'diffusion_distillation_'
                      f'port{port}_lingering_coordinator.pid')


def _lingering(port: int):
  """The process id of the service an earlier run left lingering on this
  host's `port` (its process 0 ended without shutting it down), or None."""
  try:
    with open(_lingering_file(port)) as f:
      pid = int(f.read())
    with open(f'/proc/{pid}/cmdline', 'rb') as f:
      return pid if __name__.encode() in f.read() else None  # not reused
  except (OSError, ValueError):
    return None


def end_lingering(port: int) -> bool:
  """Ends a lingering service on `port` (process 0 of a new run); whether
  there was one."""
  pid = _lingering(port)
  if pid is None:
    return False
  os.kill(pid, signal.SIGKILL)
  try:
    os.unlink(_lingering_file(port))
  except OSError:
    pass
  return True


def wait_lingering(port: int, timeout: float):
  """Waits (at most `timeout` s) until no service lingers on `port`: a
  process of a new run that joined it would lose it when its process 0
  ends it."""
  deadline = time.monotonic() + timeout
  while _lingering(port) is not None and time.monotonic() < deadline:
    time.sleep(0.2)


def main(spec: str):
  for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(signum, signal.SIG_IGN)
  spec = json.loads(spec)
  from jax._src.lib import _jax  # pylint: disable=g-import-not-at-top
  service = _jax.get_distributed_runtime_service(spec['address'],
                                                 **spec['service_args'])
  print(_READY, flush=True)
  if not sys.stdin.readline():  # process 0 ended without shutting it down
    lingering = _lingering_file(int(spec['address'].rsplit(':', 1)[1]))
    with open(lingering, 'w') as f:
      f.write(str(os.getpid()))
    try:
      time.sleep(spec['grace'])
    finally:
      os.unlink(lingering)
    os._exit(0)  # pylint: disable=protected-access
  service.shutdown()


if __name__ == '__main__':
  main(sys.argv[1])
