"""What every `python -m hart_jax.X` entry point runs under.

  def main(argv): ...
  if __name__ == "__main__":
    cli.run(main)

- A user mistake (a `HartError`, a bad flag, a bad config or override) is
  one line on stderr, `error: ...`, and exit status 2; anything else is a
  bug and keeps its traceback.
- A stop the program chose (`Stopped`: a training loop that saved after
  Ctrl-C or SIGTERM) prints its one line and exits with its status; a
  Ctrl-C anywhere else is one line and status 130.
- The console carries the program's own output, its progress bars and
  warnings that matter (see hart_jax/console.py); `--verbosity=0` (or
  higher) brings absl's full output back.
- Compiled programs are cached across runs in ~/.cache/hart_jax/xla
  (JAX_COMPILATION_CACHE_DIR overrides it).
"""

import logging
import os
import sys
from typing import Any, Callable, NoReturn, Optional

from absl import app
from absl import flags
import ml_collections

from hart_jax import config_loading
from hart_jax import console
from hart_jax.errors import HartError, Stopped

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class ConfigArg:
  """The `--config` of an entry point, loaded (with its overrides) before
  main runs; `.value` is the ConfigDict."""

  def __init__(self, name: str, required: bool, help_text: str):
    self.name, self.required = name, required
    self.value: Optional[ml_collections.ConfigDict] = None
    self.spec: Optional[str] = None
    # Declared to absl only so --help lists it; run() takes it out of argv.
    flags.DEFINE_string(name, None, help_text + " A bundled name (demo, "
                        "tiny, ...) or a .py path, optionally :ARGS; fields "
                        f"are overridden with --{name}.a.b=VALUE.")


_CONFIG_ARGS: list[ConfigArg] = []


def define_config(name: str = "config", required: bool = True,
                  help_text: str = "The config.") -> ConfigArg:
  arg = ConfigArg(name, required, help_text)
  _CONFIG_ARGS.append(arg)
  return arg


def fail(message: str, code: int = EXIT_USER_ERROR) -> NoReturn:
  sys.stdout.flush()
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parser with our error discipline (one line, status 2)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = str(e).strip().splitlines()[0]
    fail(f"{message} (see --help)")


def _exit_now(message: str, code: int) -> NoReturn:
  sys.stdout.flush()
  print(message, file=sys.stderr, flush=True)
  logging.shutdown()
  os._exit(code)  # pylint: disable=protected-access


def run(main: Callable[[list[str]], Any]) -> NoReturn:
  """absl.app.run(main) with the discipline of this module's docstring."""
  argv = list(sys.argv)
  config_args = []
  try:
    for arg in _CONFIG_ARGS:
      argv, spec, overrides = config_loading.split_config_args(
          argv, arg.name)
      config_args.append((arg, spec, overrides))
  except HartError as e:
    fail(str(e))

  def wrapped(rest: list[str]):
    console.quiet_libraries(not flags.FLAGS["verbosity"].present)
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
      import jax  # pylint: disable=g-import-not-at-top
      jax.config.update("jax_compilation_cache_dir", os.path.expanduser(
          "~/.cache/hart_jax/xla"))
    try:
      for arg, spec, overrides in config_args:
        if spec is None:
          if arg.required:
            raise config_loading.ConfigError(
                f"--{arg.name} is required, e.g. --{arg.name}=demo (bundled:"
                f" {', '.join(config_loading.available_names())})")
          if overrides:
            raise config_loading.ConfigError(
                f"--{arg.name}.{overrides[0][0]} given without --{arg.name}")
          continue
        config = config_loading.load_config(spec)
        config_loading.apply_overrides(config, overrides)
        arg.value, arg.spec = config, spec
      if len(rest) > 1:
        raise HartError(f"unexpected arguments: {' '.join(rest[1:])} "
                        "(flags are --name=value)")
      main(rest)
    except HartError as e:
      fail(str(e))
    except Stopped as e:
      # What mattered is saved and said; a normal exit would let
      # background threads (async checkpoint writers) print teardown noise.
      _exit_now(str(e), e.exit_code)
    except KeyboardInterrupt:
      _exit_now("interrupted", EXIT_INTERRUPTED)
    sys.exit(0)

  app.run(wrapped, argv=argv, flags_parser=_parse_flags)
