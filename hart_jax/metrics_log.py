"""metrics.jsonl: one JSON object per logged step, append-only.

A resumed run first drops the rows of steps after the checkpoint it
resumes from (they were logged by the interrupted run and are about to be
trained and logged again), so every step appears once.
"""

import json
import os
from typing import Any, Optional

from hart_jax import atomic_io


class MetricsLog:
  """Appends rows to `path`; `resume_at(step)` forgets later rows."""

  def __init__(self, path: str):
    self.path = path

  def resume_at(self, step: int) -> None:
    if not os.path.exists(self.path):
      return
    with open(self.path, encoding="utf-8") as f:
      lines = f.read().splitlines()
    kept = [line for line in lines if _step_of(line) is not None
            and _step_of(line) <= step]
    if len(kept) != len(lines):
      atomic_io.atomic_write_bytes(
          self.path, "".join(line + "\n" for line in kept).encode())

  def append(self, step: int, metrics: dict[str, Any]) -> None:
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(dict(step=step, **metrics)) + "\n")

  def last(self) -> dict[str, Any]:
    """The newest row without its step, or {}."""
    if not os.path.exists(self.path):
      return {}
    with open(self.path, encoding="utf-8") as f:
      lines = [line for line in f.read().splitlines()
               if _step_of(line) is not None]
    if not lines:
      return {}
    row = json.loads(lines[-1])
    row.pop("step")
    return row


def _step_of(line: str) -> Optional[int]:
  """The step of a row; None for a torn last line of a killed run."""
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return None
