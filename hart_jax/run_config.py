"""The config a training run used, saved in its workdir as config.json.

Whatever later reads the run (sampling, export, evaluation, init_from)
takes the model, tokenizer and text-encoder settings from here, so a
workdir is self-describing. config.txt beside it is the same for people.
"""

import json
import os

import ml_collections

from hart_jax import atomic_io
from hart_jax.errors import CheckpointError

FILE = "config.json"


def save_run_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  atomic_io.atomic_write_bytes(os.path.join(workdir, FILE),
                               config.to_json(indent=2).encode())
  atomic_io.atomic_write_bytes(os.path.join(workdir, "config.txt"),
                               str(config).encode())


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The ConfigDict a run in `workdir` was trained with."""
  path = os.path.join(workdir, FILE)
  if not os.path.isfile(path):
    raise CheckpointError(
        f"{workdir} has no {FILE}: it is not a hart_jax training run, or "
        "one made before runs recorded their config (rerun its training "
        "command once with the same --workdir to write it)")
  try:
    with open(path, encoding="utf-8") as f:
      raw = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path} is not valid JSON: {e}") from e
  if not isinstance(raw, dict) or "stage" not in raw:
    raise CheckpointError(f"{path} is not a hart_jax run config")
  return ml_collections.ConfigDict(raw)
