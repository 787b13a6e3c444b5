"""The console and the log file of a run.

The console carries a program's own lines (`say`), its progress bar, this
package's warnings and anyone's errors; everything logged at INFO and up,
libraries included (orbax, absl, jax backend probing), goes to the run's
log file (`log_file`). `quiet_libraries(False)` (entry points do that for
`--verbosity`) leaves absl's own console output as it is.
"""

import contextlib
import logging
import os
import sys
from typing import Iterator

import tqdm

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def say(message: str = "") -> None:
  """One line to stdout without breaking a progress bar."""
  tqdm.tqdm.write(message, file=sys.stdout)


class _ConsoleHandler(logging.Handler):
  """Warnings of this package and errors of anyone, one line each."""

  def emit(self, record: logging.LogRecord) -> None:
    ours = os.path.abspath(record.pathname).startswith(_PACKAGE_DIR)
    if record.levelno < logging.WARNING or (
        record.levelno < logging.ERROR and not ours):
      return
    label = "warning" if record.levelno < logging.ERROR else "error"
    try:
      message = record.getMessage()
    except (TypeError, ValueError):
      message = str(record.msg)
    tqdm.tqdm.write(f"{label}: {message}", file=sys.stderr)


def quiet_libraries(quiet: bool = True) -> None:
  """Routes the console through _ConsoleHandler (quiet) and lets INFO
  through to log files."""
  root = logging.getLogger()
  root.setLevel(logging.INFO)
  if not quiet or any(isinstance(h, _ConsoleHandler) for h in root.handlers):
    return
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.get_absl_handler().setLevel(logging.CRITICAL + 1)
  root.addHandler(_ConsoleHandler())


@contextlib.contextmanager
def log_file(path: str) -> Iterator[None]:
  """Appends everything logged inside the block (INFO and up) to `path`."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  handler = logging.FileHandler(path)
  handler.setFormatter(logging.Formatter(
      "%(asctime)s %(levelname)s %(filename)s:%(lineno)d] %(message)s"))
  handler.setLevel(logging.INFO)
  root = logging.getLogger()
  if root.level > logging.INFO or root.level == logging.NOTSET:
    root.setLevel(logging.INFO)
  root.addHandler(handler)
  try:
    yield
  finally:
    root.removeHandler(handler)
    handler.close()
