"""The watchdog's beat thread leaves JAX's client alone once the process ends.

A store call still in flight while JAX shuts its distributed client down at
exit aborts the process in C++ ('terminate called without an active
exception'); seen in CI on jax 0.12, and 2 of 8 two-process runs with a 2 ms
beat interval before `Watchdog.stop` existed, 0 of 16 after.
"""

import threading
import time

from diffusion_distillation.parallel import watchdog


class _Store:
  """A distributed client's key-value store that notes calls made after it
  was shut down."""

  def __init__(self):
    self.entries, self.shut_down, self.late_calls = {}, False, []
    self.lock = threading.Lock()

  def _call(self, name):
    with self.lock:
      if self.shut_down:
        self.late_calls.append(name)
    time.sleep(0.003)  # a round trip

  def key_value_set(self, key, value, allow_overwrite=False):
    del allow_overwrite
    self._call('key_value_set')
    self.entries[key] = value

  def key_value_dir_get(self, prefix):
    self._call('key_value_dir_get')
    return [(k, v) for k, v in self.entries.items() if k.startswith(prefix)]


def test_stop_ends_the_beats_before_the_client_shuts_down():
  store = _Store()
  dog = watchdog.Watchdog(store, process_id=0, num_processes=1, timeout=30.,
                          interval=0.001)
  dog.start()
  time.sleep(0.1)
  assert dog.beats > 5
  dog.stop()  # what atexit runs before JAX's own clean-up
  with store.lock:
    store.shut_down = True
  assert not dog.is_alive()
  time.sleep(0.05)
  assert store.late_calls == []
