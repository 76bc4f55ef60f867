r"""`diffusion_distillation.main` on a disk that fills up after N saves.

    DD_SAVES_BEFORE_FULL=1 python tests/disk_full_worker.py --config=... \
        --workdir=...

Exactly the training CLI, except that orbax's checkpoint save raises the
operating system's "No space left on device" once N checkpoints were written.
"""

import errno
import os

import orbax.checkpoint as ocp

from diffusion_distillation.cli import main as main_lib


def _fill_disk_after(saves: int):
  original = ocp.CheckpointManager.save
  left = [saves]

  def save(self, *args, **kwargs):
    if not left[0]:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    left[0] -= 1
    return original(self, *args, **kwargs)

  ocp.CheckpointManager.save = save


if __name__ == '__main__':
  _fill_disk_after(int(os.environ['DD_SAVES_BEFORE_FULL']))
  main_lib.run()
