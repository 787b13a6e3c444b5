"""The project's error types: what a user can fix, told in one line.

Every entry point (`python -m hart_jax.X`) prints a `HartError` as one
line on stderr and exits with status 2, without a traceback; any other
exception is a bug and keeps its traceback. Raise these for mistakes in
what the user gave (flags, config fields, files, folders, data) with a
message that names the flag, field, file or key and says what was
expected. They also derive from ValueError, so callers that caught the
ValueErrors these replaced keep working.
"""


class HartError(ValueError):
  """A mistake in the user's input; the message is the whole story."""


class ConfigError(HartError):
  """A config field, flag or their combination that cannot work."""


class InputError(HartError):
  """A path, file or its contents (image, data, cache) that cannot be used."""


class CheckpointError(InputError):
  """A checkpoint (ours or official) that is missing, damaged or does not
  fit the model."""


class Stopped(Exception):
  """A program stopped early on purpose (Ctrl-C or SIGTERM during
  training, after saving): not an error. The message says what was kept
  and how to continue; entry points print it and exit with `exit_code`."""

  def __init__(self, message: str, exit_code: int):
    super().__init__(message)
    self.exit_code = exit_code
