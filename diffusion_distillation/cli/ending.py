"""How a command ends: every way, in one line (see `run`).

A request that cannot be served, a machine fault (a full disk, exhausted
memory, a lost peer), SIGTERM, Ctrl-C and a stopped training run each end
with one line on stderr and their own exit status, on every process of a
multi-process run; only a bug shows a traceback.
"""

import functools
import os
import signal
import sys
import tempfile
import traceback
from typing import Callable

from absl import app
from absl import flags

from diffusion_distillation.cli import common
from diffusion_distillation.cli import compilation_cache
from diffusion_distillation.errors import disk_error
from diffusion_distillation.errors import first_line
from diffusion_distillation.errors import out_of_memory
from diffusion_distillation.errors import UserError
from diffusion_distillation.parallel import watchdog

def _end_with_line(error: SystemExit):
  """A SystemExit that carries `exit_status` (preemption.Preempted): its
  message as one line on stderr, and that status."""
  sys.stderr.write(f'{error.code}\n')
  sys.exit(error.exit_status)


class Terminated(SystemExit):
  """SIGTERM outside training (which saves a checkpoint first): one line,
  exit status 143 (128 + SIGTERM, the shell's convention)."""

  def __init__(self):
    super().__init__('terminated (SIGTERM); rerun the same command to start '
                     'again (a training run resumes from its last '
                     'checkpoint)')
    self.exit_status = 128 + signal.SIGTERM


def _on_sigterm(signum, frame):
  del signum, frame
  raise Terminated()


def _end_interrupted():
  sys.stdout.flush()
  sys.stderr.write('interrupted\n')
  sys.stderr.flush()


def _on_unraisable(previous_hook, unraisable):
  """Ends the program on a Ctrl-C that Python would print and drop.

  A KeyboardInterrupt raised while a garbage-collector callback runs (JAX
  registers one) or in a `__del__` cannot propagate: Python prints it as
  `Exception ignored in ...` and goes on. Here it ends the program at once,
  as Ctrl-C should, with the same one line.
  """
  if issubclass(unraisable.exc_type, KeyboardInterrupt):
    _end_interrupted()
    os._exit(130)  # pylint: disable=protected-access
  else:
    _drop_abandoned_reads(previous_hook, unraisable)


def _drop_abandoned_reads(previous_hook, unraisable):
  """Drops TensorStore's callbacks of reads still in flight when a
  checkpoint restore failed (orbax had closed its event loop): `Event loop
  is closed`, once per array, after the one-line error, up to the
  interpreter's exit. Noise, not news."""
  if not (issubclass(unraisable.exc_type, RuntimeError) and
          str(unraisable.exc_value) == 'Event loop is closed'):
    previous_hook(unraisable)


def _unexpected_line(error) -> str:
  """The line for an unexpected exception of a multi-process run: the
  process that vanished, if one did (a broken collective), else the error,
  with its traceback written to a file that the line names."""
  line = watchdog.vanished_line()
  if line is not None:
    return line
  path = os.path.join(tempfile.gettempdir(),
                      f'diffusion_distillation_traceback_{os.getpid()}.txt')
  with open(path, 'w') as f:
    traceback.print_exception(error, file=f)
  return (f'error: {type(error).__name__}: {first_line(error)} '
          f'(traceback: {path})')


def _fail_everywhere(message: str, status: int):
  """`error: <message>` and `status`, on every process of the run."""
  if watchdog.running():
    watchdog.fail(status, f'error: {message}')
  common.fail(message, status)


def _fault_message(error: Exception, memory_hint: str):
  """The line of a machine fault that Python saw (a write the disk refused
  in any writer, an allocation that failed), or None."""
  disk = disk_error(error)
  if disk:
    where = getattr(error, 'filename', None) or 'a file'
    return f'{where}: {disk[0]}; {disk[1]} and rerun'
  if out_of_memory(error):
    return f'out of memory ({first_line(error)[:200]}); {memory_hint}'
  return None


DEFAULT_MEMORY_HINT = 'free memory, or use a machine with more'
BATCH_MEMORY_HINT = 'lower --batch_size'
TRAINING_MEMORY_HINT = (
    'lower --config.train.batch_size, raise --config.train.num_microbatches '
    '(gradient accumulation) or set --config.model.remat=true')


def _help_of(main: Callable):
  """`--help`: the docstring and flags of `main`'s module (absl shows
  `__main__`'s, which is the one-line `python -m` shim without flags)."""
  sys.modules['__main__'].__doc__ = sys.modules[main.__module__].__doc__
  for module, defined in flags.FLAGS.flags_by_module_dict().items():
    if module.startswith('diffusion_distillation'):  # this command's own
      for flag in defined:
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)


def run(main: Callable, flags_parser: Callable = common.parse_flags,
        memory_hint: str = DEFAULT_MEMORY_HINT):
  """`absl.app.run(main)`, every way it can end in one line.

  A UserError: `error: <message>`, exit status 2 (1 for a FaultError: a
  full disk, a lost peer, exhausted memory; an allocation that failed ends
  with `memory_hint`, what to lower). SIGTERM: `terminated ...`,
  exit status 143. Ctrl-C: `interrupted`, exit status 130. (Training saves a
  checkpoint first on either, and ends with its own line.) A stopped
  training run (preemption.Preempted): its message and status. In a
  multi-process run an error on one process ends all of them with its line
  (an unexpected exception too, its traceback in a file).

  `--help` shows the docstring and the flags of `main`'s module.
  """
  _help_of(main)

  def guarded(argv):
    if len(argv) > 1:
      common.fail(f'unexpected arguments: {" ".join(argv[1:])}')
    common.quiet_library_logs()
    try:
      compilation_cache.configure()
      return main(argv)
    except UserError as e:
      _fail_everywhere(common.in_flag_words(str(e), common.our_flag_names()),
                       e.exit_status)
    except SystemExit as e:
      if getattr(e, 'exit_status', None) is None:
        raise
      if isinstance(e, Terminated) and watchdog.running():
        watchdog.fail(e.exit_status, str(e.code))
      _end_with_line(e)
    except Exception as e:  # pylint: disable=broad-except
      message = _fault_message(e, memory_hint)
      if message:
        _fail_everywhere(message, 1)
      if watchdog.running():
        watchdog.fail(1, _unexpected_line(e))
      raise

  previous_sigterm = signal.getsignal(signal.SIGTERM)
  if previous_sigterm is not signal.SIG_IGN:
    signal.signal(signal.SIGTERM, _on_sigterm)
  previous_hook = sys.unraisablehook
  sys.unraisablehook = functools.partial(_on_unraisable, previous_hook)
  try:
    app.run(guarded, flags_parser=flags_parser)
  except KeyboardInterrupt:
    _end_interrupted()
    sys.exit(130)
  finally:  # abandoned reads report until the interpreter exits
    sys.unraisablehook = functools.partial(_drop_abandoned_reads,
                                           previous_hook)
    if previous_sigterm is not None:
      signal.signal(signal.SIGTERM, previous_sigterm)
