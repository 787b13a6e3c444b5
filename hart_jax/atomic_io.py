"""Atomic, durable writes: readers never see half a file or half a folder.

Everything is written to a temporary sibling (same filesystem, so the
final rename is atomic), fsynced, renamed over the target only once
complete, and the directory is fsynced after the rename so the new name
survives a power cut. A failure leaves what was there before; leftovers
of a killed process (the `.tmp-` siblings) are removed by the next write
to the same target. An OS error while writing (disk full, read-only,
permission) is one `InputError` naming the target.
"""

import contextlib
import ctypes
import ctypes.util
import errno
import glob
import json
import os
import shutil
import tempfile
import time
from typing import Callable, Iterator, Mapping

from hart_jax.errors import InputError

_RENAME_EXCHANGE = 2  # linux/fs.h


def _tmp_prefix(path: str) -> str:
  # The temp name keeps the target's name in front: torch.save derives the
  # archive's inner folder from it and rejects names that start with a dot.
  return os.path.basename(os.path.normpath(path)) + ".tmp-"


def _remove_stale(path: str) -> None:
  """Temp siblings of `path` left by a killed writer (older than a minute,
  so a concurrent writer's live temp file is left alone)."""
  cutoff = time.time() - 60
  pattern = os.path.join(glob.escape(os.path.dirname(os.path.abspath(path))),
                         glob.escape(_tmp_prefix(path)) + "*")
  for stale in glob.glob(pattern):
    try:
      if stale.endswith("-old") and not os.path.exists(path):
        # A folder swap without renameat2 died between its two renames:
        # this is the previous folder, put it back.
        os.rename(stale, path)
        continue
      if os.path.getmtime(stale) < cutoff:
        if os.path.isdir(stale) and not os.path.islink(stale):
          shutil.rmtree(stale, ignore_errors=True)
        else:
          os.remove(stale)
    except OSError:
      pass


def fsync_dir(directory: str) -> None:
  """Makes renames inside `directory` durable (no-op where unsupported)."""
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def _write_failed(path: str, e: OSError) -> InputError:
  reason = e.strerror or str(e)
  if e.errno == errno.ENOSPC:
    reason = "no space left on the device"
  return InputError(f"cannot write {path}: {reason}; what was there before "
                    "is unchanged")


def _prepare_parent(path: str) -> str:
  directory = os.path.dirname(os.path.abspath(path))
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:
    raise _write_failed(path, e) from e
  return directory


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temp path beside `path`; renames it over `path` on success.

  The caller writes the temp file however it likes (and should fsync it;
  `atomic_write_bytes` does); it is fsynced here again before the rename.
  """
  directory = _prepare_parent(path)
  if os.path.isdir(path) and not os.path.islink(path):
    raise InputError(f"cannot write the file {path}: it is a directory")
  _remove_stale(path)
  try:
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), dir=directory)
  except OSError as e:
    raise _write_failed(path, e) from e
  os.close(fd)
  try:
    yield tmp
    # mkstemp creates 0600 files; give the result the usual permissions.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    with open(tmp, "rb+") as f:
      os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(directory)
  except OSError as e:
    raise _write_failed(path, e) from e
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def atomic_write_bytes(path: str, data: bytes) -> None:
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      f.write(data)


def atomic_write_json(path: str, obj) -> None:
  atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n"
                            ).encode())


def _exchange(a: str, b: str) -> bool:
  """Atomically swaps two existing paths (Linux renameat2); False where
  the system cannot."""
  libc_name = ctypes.util.find_library("c")
  if not libc_name:
    return False
  libc = ctypes.CDLL(libc_name, use_errno=True)
  renameat2 = getattr(libc, "renameat2", None)
  if renameat2 is None:
    return False
  at_fdcwd = -100
  result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b),
                     _RENAME_EXCHANGE)
  return result == 0


def atomic_write_folder(path: str,
                        writers: Mapping[str, Callable[[str], None]]) -> None:
  """Writes a folder whole: a reader sees the old folder or the new one.

  `writers` maps file name -> function(full_path). All files go into a
  temporary sibling folder, are fsynced, and the folder is then swapped in
  with one atomic exchange (Linux), or else by two renames (the old folder
  is kept beside until the new one is in place). Files that the old folder
  held and `writers` does not name are not carried over: the folder is
  exactly what was written.
  """
  directory = _prepare_parent(path)
  if os.path.exists(path) and not os.path.isdir(path):
    raise InputError(f"cannot write the folder {path}: a file has that name")
  _remove_stale(path)
  try:
    tmp_dir = tempfile.mkdtemp(prefix=_tmp_prefix(path), dir=directory)
  except OSError as e:
    raise _write_failed(path, e) from e
  try:
    for name, write in writers.items():
      write(os.path.join(tmp_dir, name))
      target = os.path.join(tmp_dir, name)
      if os.path.isfile(target):
        with open(target, "rb") as f:
          os.fsync(f.fileno())
    os.chmod(tmp_dir, 0o777 & ~_umask())
    fsync_dir(tmp_dir)
    if not os.path.exists(path):
      os.rename(tmp_dir, path)
    elif _exchange(tmp_dir, path):
      shutil.rmtree(tmp_dir)  # now the old folder
    else:
      old = tmp_dir + "-old"
      os.rename(path, old)
      os.rename(tmp_dir, path)
      shutil.rmtree(old)
    fsync_dir(directory)
  except OSError as e:
    raise _write_failed(path, e) from e
  finally:
    shutil.rmtree(tmp_dir, ignore_errors=True)


def _umask() -> int:
  umask = os.umask(0)
  os.umask(umask)
  return umask
