"""Helpers shared by the configs."""

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses "a=1,b=x,flag" into a ConfigDict, typed by `defaults`.

  Unknown names are an error, so a typo in `--config=X.py:arg` fails loudly.
  """
  out = ml_collections.ConfigDict(dict(defaults))
  if not arg:
    return out
  for item in arg.split(","):
    name, _, value = item.partition("=")
    if name not in defaults:
      raise ValueError(f"unknown config arg {name!r}; known: "
                       f"{sorted(defaults)}")
    default = defaults[name]
    if isinstance(default, bool):
      out[name] = value.lower() in ("", "1", "true", "yes")
    else:
      out[name] = type(default)(value)
  return out
