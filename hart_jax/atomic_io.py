"""Atomic file writes: readers never see half a file, failures keep the old.

Everything is written to a temp path in the destination's own directory
(same filesystem, so the final os.replace is atomic) and renamed over the
target only once complete.
"""

import contextlib
import json
import os
import shutil
import tempfile
from typing import Iterator


def atomic_write_bytes(path: str, data: bytes) -> None:
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())


def atomic_write_json(path: str, obj) -> None:
  atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n"
                            ).encode())


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temp path beside `path`; renames it over `path` on success."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  # The temp name keeps the target's name in front: torch.save derives the
  # archive's inner folder from it and rejects names that start with a dot.
  fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".tmp-",
                             dir=directory)
  os.close(fd)
  try:
    yield tmp
    # mkstemp creates 0600 files; give the result the usual permissions.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def atomic_write_folder(path: str, writers) -> None:
  """Writes a folder of files so that it is never seen half-written.

  `writers` maps file name -> function(full_path). Everything goes into a
  temp folder first; only when all files are complete are they moved in
  (one rename per file, weights before config.json so a reader that keys
  on config.json never meets stale weights).
  """
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  tmp_dir = tempfile.mkdtemp(prefix=".tmp-export-", dir=parent)
  try:
    for name, write in writers.items():
      write(os.path.join(tmp_dir, name))
    os.makedirs(path, exist_ok=True)
    names = sorted(writers, key=lambda n: n == "config.json")
    for name in names:
      os.replace(os.path.join(tmp_dir, name), os.path.join(path, name))
  finally:
    shutil.rmtree(tmp_dir, ignore_errors=True)
