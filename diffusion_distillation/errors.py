"""The one exception family that command-line tools show as a single line."""


class UserError(ValueError):
  """A request that cannot be served as given: a bad flag, config, path or file.

  Its message names the offending field or path and says what to do. The
  command-line tools print it as `error: <message>` and exit with status 2;
  anything else that escapes is a bug in this package.
  """


class ModelError(UserError):
  """A model that cannot be loaded or sampled as asked.

  The one type `diffusion_distillation.load` and a loaded model's `sample`
  raise for a wrong combination (a student never distilled, labels for an
  unconditional model, a checkpoint that does not fit its config, ...); the
  message says what is available.
  """


def first_line(error: BaseException) -> str:
  """An exception's message in one line (its type's name if it has none),
  for the one-line errors of things that fail below us."""
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__
