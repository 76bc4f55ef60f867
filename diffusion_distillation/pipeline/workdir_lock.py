"""One run per workdir, and workdirs that can be written, checked up front.

`hold(workdir)` is held for the whole of a training run by process 0 (the
other processes of a multi-process run write the same workdir under process
0's lock). A second run on the same workdir stops at once with one line
naming the holder: `WorkdirInUseError`, a UserError.

Local paths: `WORKDIR/.lock`, locked with `fcntl.flock(LOCK_EX | LOCK_NB)`.
The kernel drops the lock when the holding process ends, however it ends
(Ctrl-C, SIGKILL, out of memory, a crash), so a later run takes over a dead
run's lock with no staleness rule and no race. The file holds the holder's
host, process id and start time (JSON), for the second run's message; it
stays in the workdir after the run (deleting a lock file is what would open
a race). flock holds on local disks; on NFS, Linux maps it to an NFS lock
(NFSv4, or v3 with lockd); other network file systems may lock per machine.

Other paths (`gs://`, any `scheme://`): object stores have no locks, so
`WORKDIR/lock.json` is a lease: host, process id, start time, a random token
and a heartbeat time that a daemon thread rewrites every `HEARTBEAT_SECONDS`.
A lease whose heartbeat is older than `STALE_SECONDS` belongs to a run that
died; it is taken over, with a warning. What this does not guarantee:
  * Taking a lease is read, write, then read back after `SETTLE_SECONDS`:
    of two runs that both found no live lease, the one that wrote first reads
    the other's token back and stops. Both go on only if one of them took
    longer than SETTLE_SECONDS between its read and its write (e.g. it
    stalled there), i.e. for two starts within seconds of each other.
  * Staleness compares this host's clock with the holder's heartbeat time;
    clocks minutes apart make a live lease look stale (or a dead one live).
  * A holder stopped for longer than STALE_SECONDS (a suspended VM) loses the
    lease to a newer run; its heartbeat then logs an error, but both runs go
    on writing the workdir.
"""

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import threading
import time
import uuid

from absl import logging
from etils import epath
import jax

from diffusion_distillation.errors import UserError
from diffusion_distillation.parallel import distributed
from diffusion_distillation import paths
from diffusion_distillation.paths import is_local  # flock; else a lease

LOCK_FILE = '.lock'
LEASE_FILE = 'lock.json'
HEARTBEAT_SECONDS = 60.
STALE_SECONDS = 300.
SETTLE_SECONDS = 2.


class WorkdirInUseError(UserError):
  """Another run holds the workdir."""


class WorkdirAccessError(UserError):
  """The workdir (or a directory in it) is a file or cannot be written."""


def _now_iso() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec='seconds')


def _reason(error: OSError) -> str:
  return error.strerror or str(error)


def check_directory(path, label=None):
  """Raises WorkdirAccessError if `path`, or locally a parent, is a file
  (UserError if a URL's store does not answer: `paths.check_reachable`).

  A path that does not exist yet passes. `label` names `path` in the
  message (e.g. '--workdir=PATH').
  """
  path = epath.Path(path)
  label = label or str(path)
  paths.check_reachable(path, label)
  if path.exists():
    if not path.is_dir():
      raise WorkdirAccessError(f'{label} is a file, not a directory')
    return
  if is_local(path):
    for parent in path.parents:
      if parent.exists():
        if not parent.is_dir():
          raise WorkdirAccessError(
              f'{label}: {parent} is a file, not a directory')
        return


def check_writable(directory, label=None):
  """Creates `directory` if needed and writes (then removes) a probe file.

  An actual write, not a permission check: root ignores file modes, and
  read-only mounts, quotas and bucket permissions show only on writing.
  Raises WorkdirAccessError with the reason.
  """
  directory = epath.Path(directory)
  label = label or str(directory)
  check_directory(directory, label)
  probe = directory / f'.write_probe_{socket.gethostname()}_{os.getpid()}'
  try:
    directory.mkdir(parents=True, exist_ok=True)
    probe.write_text('')
    probe.unlink()
  except OSError as e:
    raise WorkdirAccessError(
        f'{label}: cannot write there ({_reason(e)})') from None


def _in_use(workdir, lock_file: str, holder,
            detail: str = '') -> WorkdirInUseError:
  if not holder:
    return WorkdirInUseError(
        f'{workdir} is in use by another process (it holds '
        f'{epath.Path(workdir) / lock_file}); wait for it or stop it')
  return WorkdirInUseError(
      f'{workdir} is in use by process {holder.get("pid")} on host '
      f'{holder.get("host")} (started {holder.get("started")}{detail}); '
      'wait for it or stop it')


def _read_holder(fd: int):
  """The JSON a holder wrote into the lock file; None if unreadable."""
  for _ in range(20):  # the holder writes right after locking
    try:
      return json.loads(os.pread(fd, 4096, 0).decode())
    except ValueError:
      time.sleep(0.05)
  return None


@contextlib.contextmanager
def _flock(workdir: epath.Path):
  """Holds `WORKDIR/.lock` with flock; the kernel releases it on any exit."""
  path = workdir / LOCK_FILE
  try:
    fd = os.open(os.fspath(path), os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise WorkdirAccessError(f'{path}: cannot open it ({_reason(e)})') from None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise WorkdirAccessError(
            f'{path}: cannot lock it ({_reason(e)})') from None
      raise _in_use(workdir, LOCK_FILE, _read_holder(fd)) from None
    holder = dict(host=socket.gethostname(), pid=os.getpid(),
                  started=_now_iso())
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    yield
  finally:
    os.close(fd)  # releases the lock


class Lease:
  """`WORKDIR/lock.json` as a lease, for paths without locks (gs://).

  `clock` (seconds, like time.time) and `sleep` are parameters for tests.
  """

  def __init__(self, workdir, *, clock=time.time, sleep=time.sleep,
               stale_s: float = STALE_SECONDS,
               settle_s: float = SETTLE_SECONDS):
    self.workdir = epath.Path(workdir)
    self.path = self.workdir / LEASE_FILE
    self._clock, self._sleep = clock, sleep
    self._stale_s, self._settle_s = stale_s, settle_s
    self.record = dict(host=socket.gethostname(), pid=os.getpid(),
                       started=_now_iso(), token=uuid.uuid4().hex,
                       heartbeat=None)

  def _read(self):
    try:
      return json.loads(self.path.read_text())
    except FileNotFoundError:
      return None
    except ValueError:  # a torn or foreign file: no live holder in it
      return {}

  def _write(self):
    """Replaces the lease whole, so a reader never sees half of it."""
    self.record['heartbeat'] = self._clock()
    staged = self.path.with_name(f'{LEASE_FILE}.{self.record["token"]}')
    staged.write_text(json.dumps(self.record))
    staged.replace(self.path)

  def acquire(self):
    """Takes the lease, or raises WorkdirInUseError naming the live holder."""
    holder = self._read()
    if holder:
      age = self._clock() - float(holder.get('heartbeat') or 0.)
      if age < self._stale_s:
        raise _in_use(self.workdir, LEASE_FILE, holder,
                      f', last heartbeat {age:.0f} s ago')
      logging.warning(
          'Taking over the lease %s of process %s on host %s: no heartbeat '
          'for %.0f s (over %.0f s), so that run has died.', self.path,
          holder.get('pid'), holder.get('host'), age, self._stale_s)
    self._write()
    self._sleep(self._settle_s)
    holder = self._read()
    if not holder or holder.get('token') != self.record['token']:
      raise _in_use(self.workdir, LEASE_FILE, holder,
                    ', took the lease at the same time')

  def beat(self) -> bool:
    """Refreshes the heartbeat; False (and an error logged) if it was lost."""
    holder = self._read()
    if holder and holder.get('token') != self.record['token']:
      logging.error(
          'The lease %s was taken over by process %s on host %s (this run '
          'missed its heartbeats for over %.0f s); two runs now write this '
          'workdir: stop one.', self.path, holder.get('pid'),
          holder.get('host'), self._stale_s)
      return False
    self._write()
    return True

  def release(self):
    """Removes the lease if it is still this run's."""
    holder = self._read()
    if holder and holder.get('token') == self.record['token']:
      self.path.unlink()


def _heartbeats(lease: Lease, every_s: float, stop: threading.Event):
  while not stop.wait(every_s):
    try:
      if not lease.beat():
        return
    except OSError as e:  # a transient storage error: try again next time
      logging.warning('Heartbeat of %s failed: %s', lease.path, e)


@contextlib.contextmanager
def _leased(workdir: epath.Path, heartbeat_s: float, **lease_args):
  lease = Lease(workdir, **lease_args)
  lease.acquire()
  stop = threading.Event()
  thread = threading.Thread(target=_heartbeats, args=(lease, heartbeat_s, stop),
                            name='workdir-lease-heartbeat', daemon=True)
  thread.start()
  try:
    yield
  finally:
    stop.set()
    thread.join()
    lease.release()


@contextlib.contextmanager
def hold(workdir, *, local=None, heartbeat_s: float = HEARTBEAT_SECONDS,
         **lease_args):
  """Holds the workdir for this run (process 0); creates it if needed.

  Checks first that every process can write the workdir (`check_writable`). `local`
  picks the flock (True) or the lease (False); None: by the path
  (`is_local`). `lease_args` go to `Lease` (clock, sleep, stale_s,
  settle_s). Raises WorkdirInUseError or WorkdirAccessError.
  """
  workdir = epath.Path(workdir)
  problem = None
  try:  # on every process: a mount that one host lacks shows here
    check_writable(workdir, f'--workdir={workdir}')
  except WorkdirAccessError as e:
    problem = str(e)
  problem = distributed.first_problem(problem)
  if problem:
    raise WorkdirAccessError(problem)
  if jax.process_index() != 0:
    yield
    return
  use_flock = is_local(workdir) if local is None else local
  with (_flock(workdir) if use_flock
        else _leased(workdir, heartbeat_s, **lease_args)):
    yield
