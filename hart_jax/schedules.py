"""HART's scale schedules (hart_spec.md 2.1) and the config-dict helper.

A schedule lists the side of each scale's token map, coarse to fine; its
last entry is the latent's side (image side = last * tokenizer downsample).
"""

import dataclasses
from typing import Any, Mapping, TypeVar

from hart_jax.errors import ConfigError

SCHEDULE_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
SCHEDULE_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)
SCHEDULE_1024 = (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64)
BY_RESOLUTION = {256: SCHEDULE_256, 512: SCHEDULE_512, 1024: SCHEDULE_1024}

T = TypeVar("T")


def dataclass_from_mapping(cls: type[T], values: Mapping[str, Any],
                           what: str) -> T:
  """cls(**values), naming unknown keys instead of a TypeError."""
  values = dict(values)
  unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
  if unknown:
    raise ConfigError(f"unknown {what} config key(s): {sorted(unknown)}")
  return cls(**values)
