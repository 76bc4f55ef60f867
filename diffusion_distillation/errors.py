"""The one exception family that command-line tools show as a single line."""


class UserError(ValueError):
  """A request that cannot be served as given: a bad flag, config, path or file.

  Its message names the offending field or path and says what to do. The
  command-line tools print it as `error: <message>` and exit with status 2;
  anything else that escapes is a bug in this package.
  """
