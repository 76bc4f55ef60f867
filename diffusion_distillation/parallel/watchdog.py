"""One failure ends every process of a multi-process run, each in one line.

Left to JAX, an error on one process hangs the others (in a collective, a
barrier or the shutdown barrier) until, minutes later, the distributed
service aborts them with C++ stack traces. Here every process runs a thread
that beats through the distributed key-value store and watches its peers:

* a process that fails (a UserError, a collective that broke, any exception)
  publishes its one-line message before it exits (`fail`); every other
  process prints the same line and exits with the same status within about a
  second, acknowledging it first so that the coordinator (process 0, which
  holds the store) stays up until all have read it;
* a process whose beats stop for `timeout` seconds (SIGKILL, out of memory,
  its host down, SIGSTOP) makes the others exit with a line that names it;
* a process that cannot reach the store (parallel/coordinator.py) for
  `timeout` seconds exits with a line that says so.

Exits are `exit_now` (`os._exit`): JAX's shutdown barrier would wait for the
dead.
"""

import atexit
import os
import sys
import threading
import time

_PREFIX = 'dd_watchdog/'
_FAILED = _PREFIX + 'failed'
_ACK = _PREFIX + 'ack/'
_BEAT = _PREFIX + 'beat/'
_ACK_WAIT_S = 5.
LOST_COORDINATOR = ("error: lost contact with the run's coordination service "
                    "on process 0's host (the host went down, or the service "
                    'was killed); every process stops')

_watchdog = None  # the running Watchdog of this process, if any


def exit_now(status: int, line: str):
  """Prints `line` and ends this process at once (no exit handlers: JAX's
  would wait for the processes that are gone)."""
  sys.stdout.flush()
  sys.stderr.write(line + '\n')
  sys.stderr.flush()
  os._exit(status)  # pylint: disable=protected-access


class Watchdog(threading.Thread):
  """Beats for this process; ends it when a peer failed or went silent."""

  def __init__(self, client, process_id: int, num_processes: int,
               timeout: float, interval: float = 1.):
    super().__init__(name='dd-watchdog', daemon=True)
    self.client, self.process_id = client, process_id
    self.num_processes, self.timeout, self.interval = (num_processes, timeout,
                                                       interval)
    self.beats = 0
    self.seen = {}  # peer -> (its last beat, when it changed, our clock)
    # The process is ending: with a line of ours, or normally (at exit,
    # before JAX shuts the distributed service down).
    self.failing = threading.Event()
    self.last_contact = time.monotonic()  # of the last round with the store

  def _entries(self) -> dict:
    return dict(self.client.key_value_dir_get(_PREFIX))

  def silent_peers(self, entries: dict, now: float, limit: float) -> list:
    """Peers whose beat has not changed for `limit` seconds (or never came
    while we waited that long)."""
    silent = []
    for peer in range(self.num_processes):
      if peer == self.process_id:
        continue
      beat = entries.get(f'{_BEAT}{peer}')
      last, since = self.seen.get(peer, (None, now))
      if beat != last:
        self.seen[peer] = (beat, now)
      elif now - since >= limit:
        silent.append(peer)
    return silent

  def run(self):
    while True:
      self.beats += 1
      try:
        self.client.key_value_set(f'{_BEAT}{self.process_id}',
                                  str(self.beats), allow_overwrite=True)
        entries = self._entries()
      except Exception:  # pylint: disable=broad-except
        if self.failing.is_set():
          return
        exit_now(1, LOST_COORDINATOR)
      self.last_contact = time.monotonic()
      if _FAILED in entries and not self.failing.is_set():
        self._follow(entries[_FAILED])
      silent = self.silent_peers(entries, time.monotonic(), self.timeout)
      if silent and not self.failing.is_set():
        exit_now(1, f'error: {_name(silent, self.num_processes)} stopped '
              f'responding (no heartbeat for {self.timeout:g} s: killed, '
              'frozen, out of memory, or its host went down); every process '
              'stops')
      if self.failing.wait(self.interval):
        return

  def stop(self):
    """At a normal exit, before JAX shuts its client down: ends the beats
    and waits for the one in flight. A store call that is still running
    while JAX tears the client down aborts the process in C++ ('terminate
    called without an active exception')."""
    self.failing.set()
    self.join(timeout=self.timeout)

  def watch_contact(self):
    """A second thread: the store's calls block while the coordinator is
    frozen (SIGSTOP, a hung host), so their absence is timed here."""
    woke = time.monotonic()
    while True:
      time.sleep(self.interval)
      now, slept = time.monotonic(), time.monotonic() - woke
      woke = now
      if slept > 2 * self.interval + 1:  # this process was frozen itself
        self.last_contact = max(self.last_contact, now)
      silent_for = now - self.last_contact
      if silent_for > self.timeout and not self.failing.is_set():
        exit_now(1, LOST_COORDINATOR)

  def _follow(self, published: str):
    """Another process failed: acknowledge, print its line, exit alike."""
    self.failing.set()
    status, _, line = published.partition(' ')
    try:
      self.client.key_value_set(f'{_ACK}{self.process_id}', '1')
      self._outlast_peers()
    finally:
      exit_now(int(status), line)

  def _outlast_peers(self):
    """On process 0, which holds the store, waits until the others have
    gone: a process that loses the store before it exits is aborted by JAX
    with a C++ stack trace."""
    if self.process_id != 0:
      return
    deadline = time.monotonic() + _ACK_WAIT_S
    while time.monotonic() < deadline:
      silent = self.silent_peers(self._entries(), time.monotonic(),
                                 2 * self.interval)
      if len(silent) == self.num_processes - 1:
        return
      time.sleep(self.interval / 4)

  def fail(self, status: int, line: str):
    """Publishes this process's failure, waits until the live peers have
    read it, prints it and exits. If another process published first
    (processes that fail alike fail together), follows that one instead."""
    self.failing.set()
    try:
      published = self._entries().get(_FAILED)
      if published is None:
        try:
          self.client.key_value_set(_FAILED, f'{status} {line}')
        except Exception:  # pylint: disable=broad-except
          published = self._entries()[_FAILED]  # set since we looked
      if published is not None:
        self._follow(published)
      deadline = time.monotonic() + _ACK_WAIT_S
      while time.monotonic() < deadline:
        entries = self._entries()
        acks = {k for k in entries if k.startswith(_ACK)}
        silent = self.silent_peers(entries, time.monotonic(), 2 * self.interval)
        if len(acks) + len(silent) >= self.num_processes - 1:
          break
        time.sleep(self.interval / 4)
      self._outlast_peers()
    except Exception:  # pylint: disable=broad-except
      pass  # the store is gone: the coordinator exited; say ours
    exit_now(status, line)

  def gone_peers(self, wait: float) -> list:
    """Peers whose beat does not change within `wait` seconds: after a
    collective broke, the process that vanished."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
      try:
        silent = self.silent_peers(self._entries(), time.monotonic(),
                                   3 * self.interval)
      except Exception:  # pylint: disable=broad-except
        return [0]
      if silent:
        return silent
      time.sleep(self.interval / 2)
    return []


def _name(peers, num_processes: int) -> str:
  ids = ', '.join(map(str, peers))
  return f'process{"es" if len(peers) > 1 else ""} {ids} of {num_processes}'


def start(client, process_id: int, num_processes: int, timeout: float):
  """Starts this process's watchdog (once, after jax.distributed joined)."""
  global _watchdog
  _watchdog = Watchdog(client, process_id, num_processes, timeout)
  _watchdog.start()
  atexit.register(_watchdog.stop)  # runs before JAX's shutdown
  threading.Thread(target=_watchdog.watch_contact, name='dd-contact',
                   daemon=True).start()


def running() -> bool:
  return _watchdog is not None


def fail(status: int, line: str):
  """Ends this process and every other one with `line` (see the module)."""
  _watchdog.fail(status, line)


def vanished_line(wait: float = 5.):
  """After an unexpected error (a collective that broke, say): a line naming
  the processes that vanished, if any stopped beating within `wait` s."""
  gone = _watchdog.gone_peers(wait)
  if not gone:
    return None
  return (f'error: {_name(gone, _watchdog.num_processes)} stopped responding '
          '(killed, out of memory, or its host went down); every process '
          'stops')
