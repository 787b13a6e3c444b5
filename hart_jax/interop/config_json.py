"""Reading an official config.json into a config dataclass, field by field.

A config.json is user input: it may be no JSON, no object, or hold a field
of the wrong type. Each of those is one `CheckpointError` naming the file
and the field, instead of a TypeError from deep inside the model.
"""

import dataclasses
import json
import typing
from typing import Any, Callable, Mapping, TypeVar

from hart_jax.errors import CheckpointError, ConfigError

T = TypeVar("T")


def read_json_object(path: str) -> dict[str, Any]:
  """The JSON object in `path`; anything else is a CheckpointError."""
  try:
    with open(path, encoding="utf-8") as f:
      raw = json.load(f)
  except FileNotFoundError as e:
    raise CheckpointError(f"{path}: no such file") from e
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path} is not valid JSON: {e}") from e
  if not isinstance(raw, dict):
    raise CheckpointError(f"{path} must hold a JSON object, not a "
                          f"{type(raw).__name__}")
  return raw


def _type_ok(value, annotation) -> bool:
  """Whether a JSON value fits a dataclass field annotation."""
  if annotation is Any:
    return True
  origin = typing.get_origin(annotation)
  if origin is tuple:
    return isinstance(value, (list, tuple)) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value)
  if annotation is bool:
    return isinstance(value, bool)
  if annotation is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if annotation is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if annotation is str:
    return isinstance(value, str)
  return True


def _expected(annotation) -> str:
  if typing.get_origin(annotation) is tuple:
    return "a list of integers"
  return {bool: "true or false", int: "an integer", float: "a number",
          str: "a string"}.get(annotation, str(annotation))


def build_checked(cls: Callable[..., T], kwargs: Mapping[str, Any],
                  path: str) -> T:
  """cls(**kwargs) after checking each value against the field's type;
  a value the dataclass rejects is reported against `path` too."""
  hints = typing.get_type_hints(cls)
  for field in dataclasses.fields(cls):
    if field.name in kwargs and not _type_ok(kwargs[field.name],
                                             hints[field.name]):
      value = kwargs[field.name]
      raise CheckpointError(
          f"{path}: field {field.name!r} is {json.dumps(value)}, expected "
          f"{_expected(hints[field.name])}")
  try:
    return cls(**kwargs)
  except ConfigError as e:
    raise CheckpointError(f"{path}: {e}") from e
