r"""Runs a command's module, killed (SIGKILL) when it starts its first save.

    python tests/dying_save_worker.py python -m diffusion_distillation.main \
        --config=... --workdir=...

As a process of a multi-process run that dies in the middle of a collective
checkpoint save (out of memory, a host lost): what its peers must report.
"""

import os
import runpy
import signal
import sys

import orbax.checkpoint as ocp


def _die_on_save(*args, **kwargs):
  del args, kwargs
  os.kill(os.getpid(), signal.SIGKILL)


if __name__ == '__main__':
  _, _python, _dash_m, module, *arguments = sys.argv
  ocp.CheckpointManager.save = _die_on_save
  sys.argv = [module, *arguments]
  runpy.run_module(module, run_name='__main__', alter_sys=True)
