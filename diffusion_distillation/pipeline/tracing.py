"""`--profile_steps=N`: a `jax.profiler` trace of N training updates.

`main` traces its run's updates; `benchmark` N calls of its train and
distill updates after timing them.

The trace starts after the run's first compiled call (which compiles) and
stops once N updates ran, or at the end of the stage, and goes to
`WORKDIR/profile/`; TensorBoard's profile plugin shows it:

    pip install tensorboard tensorboard-plugin-profile
    tensorboard --logdir WORKDIR/profile
"""

from absl import logging
from etils import epath
import jax


class StepTrace:
  """Traces the first `num_steps` updates after the first call (0: none)."""

  def __init__(self, directory: epath.Path, num_steps: int):
    self.directory = directory
    self._left = num_steps
    self._tracing = False

  def after_call(self, num_updates: int, outputs):
    """After each compiled call of `num_updates` updates that made
    `outputs` (waited for before the trace stops)."""
    if self._left <= 0:
      return
    if not self._tracing:
      self.directory.mkdir(parents=True, exist_ok=True)
      jax.profiler.start_trace(str(self.directory))
      self._tracing = True
      return
    self._left -= num_updates
    if self._left <= 0:
      jax.block_until_ready(outputs)
      self.stop()

  @property
  def done(self) -> bool:
    """No step is left to trace."""
    return self._left <= 0

  def stop(self):
    """Ends the trace, if one is running (at the end of a stage)."""
    if self._tracing:
      jax.profiler.stop_trace()
      self._tracing, self._left = False, 0
      logging.info('Profile written to %s (tensorboard --logdir %s)',
                   self.directory, self.directory)
