"""Configs by short name or path, with `--config.a.b=value` overrides.

  load_config("demo")                       # configs/demo.py
  load_config("tiny:stage=tokenizer")       # with get_config's argument
  load_config("/any/dir/my_config.py:x=1")  # a file anywhere

A short name is a module of the `configs` package (installed with
hart_jax), so it works from any working directory; a path is loaded as a
file (it may import `configs.common` like the bundled ones). Overrides
must name an existing field and are parsed by that field's type, so a
misspelt or mistyped override fails before anything runs, naming itself.
"""

import ast
import importlib
import importlib.util
import os
import pkgutil
import sys
from typing import Sequence

import ml_collections

from hart_jax.errors import ConfigError


def available_names() -> list[str]:
  """The short names of the bundled configs that define get_config."""
  try:
    import configs  # pylint: disable=g-import-not-at-top
  except ImportError:
    return []
  names = []
  for info in pkgutil.iter_modules(configs.__path__):
    if info.name in ("common", "training_common") or info.ispkg:
      continue
    names.append(info.name)
  return sorted(names)


def _module_from_spec(where: str):
  """The module a --config value names (short name or file path)."""
  is_path = where.endswith(".py") or os.sep in where or "/" in where
  if not is_path:
    if where not in available_names():
      raise ConfigError(
          f"--config={where}: no bundled config of that name (known: "
          f"{', '.join(available_names())}); or give a path to a .py file")
    return importlib.import_module(f"configs.{where}")
  path = os.path.abspath(os.path.expanduser(where))
  if not os.path.isfile(path):
    raise ConfigError(f"--config={where}: no such config file ({path})")
  # The bundled configs import `configs.common`; a copy of one kept
  # elsewhere should too, wherever it is run from.
  root = os.path.dirname(os.path.dirname(path))
  if os.path.basename(os.path.dirname(path)) == "configs" and (
      root not in sys.path) and importlib.util.find_spec("configs") is None:
    sys.path.insert(0, root)
  name = "hart_jax_user_config_" + str(abs(hash(path)))
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise ConfigError(f"--config={where}: not valid Python: {e}") from e
  except ImportError as e:
    raise ConfigError(f"--config={where}: {e} (is hart_jax installed, "
                      "with its configs package?)") from e
  return module


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`NAME_OR_PATH[:ARG]` -> the ConfigDict its get_config(ARG) returns."""
  if not spec:
    raise ConfigError("--config is required: a bundled name "
                      f"({', '.join(available_names())}) or a .py path, "
                      "e.g. --config=demo")
  where, sep, arg = spec.partition(":")
  module = _module_from_spec(where)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"--config={where}: the file has no get_config()")
  try:
    config = module.get_config(arg) if sep else module.get_config()
  except (ValueError, TypeError, KeyError) as e:
    # Config files validate their own args with ValueError.
    message = str(e).strip("'\"")
    raise ConfigError(f"--config={spec}: {message}") from e
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"--config={where}: get_config() returned a "
                      f"{type(config).__name__}, not a ConfigDict")
  return config


def _parse_value(field: str, current, text: str):
  """`text` as the type of the field's current value."""
  def fail(what):
    return ConfigError(f"--config.{field}={text}: expected {what}")
  if isinstance(current, bool):
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
      return True
    if lowered in ("false", "0", "no"):
      return False
    raise fail("true or false")
  if isinstance(current, int):
    try:
      return int(text)
    except ValueError:
      raise fail("an integer") from None
  if isinstance(current, float):
    try:
      return float(text)
    except ValueError:
      raise fail("a number") from None
  if isinstance(current, str):
    return text
  if isinstance(current, (tuple, list)):
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      raise fail(f"a {type(current).__name__} such as (1, 2, 4)") from None
    if not isinstance(value, (tuple, list)):
      raise fail(f"a {type(current).__name__} such as (1, 2, 4)")
    return type(current)(value)
  if current is None:
    try:
      return ast.literal_eval(text)
    except (ValueError, SyntaxError):
      return text
  raise fail(f"a value of type {type(current).__name__}")


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Sequence[tuple[str, str]]) -> None:
  """Sets each (dotted field, text) on the config, in order."""
  for field, text in overrides:
    parts = field.split(".")
    node = config
    for depth, part in enumerate(parts):
      where = ".".join(parts[:depth]) or "the config"
      if not isinstance(node, ml_collections.ConfigDict):
        raise ConfigError(f"--config.{field}: {where} is a value, not a "
                          "section")
      if part not in node:
        known = ", ".join(sorted(node.keys()))
        raise ConfigError(f"--config.{field}: no field {part!r} in {where} "
                          f"(it has: {known})")
      if depth < len(parts) - 1:
        node = node[part]
    current = node[parts[-1]]
    if isinstance(current, ml_collections.ConfigDict):
      raise ConfigError(f"--config.{field} is a section; set one of its "
                        f"fields: {', '.join(sorted(current.keys()))}")
    with node.ignore_type():
      node[parts[-1]] = _parse_value(field, current, text)


def split_config_args(argv: Sequence[str], name: str = "config"):
  """Takes `--config=X` and `--config.a.b=V` (or `--config.a.b V`) out of
  argv; returns (remaining argv, spec or None, [(field, text), ...])."""
  rest, spec, overrides = [argv[0]], None, []
  i = 1
  while i < len(argv):
    arg = argv[i]
    if arg == "--":
      rest.extend(argv[i:])
      break
    flag, eq, value = arg.partition("=")
    if flag in (f"--{name}", f"-{name}"):
      if not eq:
        if i + 1 >= len(argv):
          raise ConfigError(f"--{name} needs a value, e.g. --{name}=demo")
        i, value = i + 1, argv[i + 1]
      spec = value
    elif flag.startswith((f"--{name}.", f"-{name}.")):
      field = flag.split(".", 1)[1]
      if not eq:
        if i + 1 >= len(argv):
          raise ConfigError(f"{flag} needs a value")
        i, value = i + 1, argv[i + 1]
      overrides.append((field, value))
    else:
      rest.append(arg)
    i += 1
  return rest, spec, overrides
