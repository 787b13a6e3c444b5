"""Reading untrusted weight files, and atomic, durable writes."""

import json
import os
import struct
import time
import tracemalloc

import numpy as np
import pytest

from hart_jax import atomic_io
from hart_jax.errors import CheckpointError, InputError
from hart_jax.interop import state_dict_io
from tests.helpers import require_module


def _raw_safetensors(path, header: dict, data: bytes = b""):
  raw = json.dumps(header).encode()
  raw += b" " * (-len(raw) % 8)
  path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


GOOD = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize("header,fragment", [
    ([1, 2], "the safetensors header is a list, not an object"),
    ({"__metadata__": {"format": 1}}, "__metadata__ must map names"),
    ({"w": "F32"}, "tensor 'w' is str, not an object"),
    ({"w": {"dtype": "F32", "shape": [2]}}, "tensor 'w' lacks ['data_offsets']"),
    ({"w": dict(GOOD, dtype="F8")}, "tensor 'w' has dtype 'F8'"),
    ({"w": dict(GOOD, shape=[-2])}, "tensor 'w' has shape [-2]"),
    ({"w": dict(GOOD, shape="2")}, "tensor 'w' has shape '2'"),
    ({"w": dict(GOOD, data_offsets=[0])}, "has data_offsets [0]"),
    ({"w": dict(GOOD, data_offsets=[0, 16])}, "do not fit the file"),
    ({"a": GOOD, "b": dict(GOOD, shape=[3])}, "tensor 'b' F32[3]"),
])
def test_safetensors_header_checked_entry_by_entry(tmp_path, header,
                                                   fragment):
  path = tmp_path / "w.safetensors"
  _raw_safetensors(path, header, bytes(8))
  with pytest.raises(CheckpointError) as info:
    state_dict_io.read_safetensors(str(path))
  assert fragment in str(info.value)
  assert str(path) in str(info.value)


def test_safetensors_round_trip_and_no_second_copy(tmp_path):
  big = np.random.default_rng(0).normal(size=(2500, 1000)).astype(
      np.float32)  # 10 MB
  small = np.arange(6, dtype=np.int64).reshape(2, 3)
  path = str(tmp_path / "w.safetensors")
  state_dict_io.write_safetensors(path, {"big": big, "small": small,
                                         "empty": np.zeros((0, 4))})
  tracemalloc.start()
  try:
    out = state_dict_io.read_safetensors(path)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  np.testing.assert_array_equal(out["big"], big)
  np.testing.assert_array_equal(out["small"], small)
  assert out["empty"].shape == (0, 4)
  # The arrays themselves are 10 MB; a read-then-copy would peak at 20.
  assert peak < 1.2 * big.nbytes, peak


def test_old_torch_refuses_pickles(tmp_path, monkeypatch):
  torch = require_module("torch", "pip install -e '.[test]'")
  path = tmp_path / "w.bin"
  torch.save({"w": torch.zeros(2)}, path)
  monkeypatch.setattr(torch, "__version__", "2.5.1+cpu")
  with pytest.raises(CheckpointError, match=r"torch 2\.5\.1\+cpu cannot "
                     r"load pickles safely .* torch >= 2\.6"):
    state_dict_io.read_torch_bin(str(path))


def test_writes_are_fsynced_with_their_directory(tmp_path, monkeypatch):
  synced = []
  real = os.fsync

  def fsync(fd):
    synced.append(os.readlink(f"/proc/self/fd/{fd}"))
    real(fd)
  monkeypatch.setattr(os, "fsync", fsync)
  atomic_io.atomic_write_bytes(str(tmp_path / "a.bin"), b"data")
  # The temp file (before its rename) and then the directory.
  assert any(os.path.basename(p).startswith("a.bin.tmp-") for p in synced)
  assert synced[-1] == str(tmp_path)
  synced.clear()
  atomic_io.atomic_write_folder(str(tmp_path / "f"), {
      "x.json": lambda p: atomic_io.atomic_write_json(p, {"a": 1})})
  assert synced[-1] == str(tmp_path)


def test_folder_is_replaced_whole(tmp_path):
  folder = tmp_path / "f"
  atomic_io.atomic_write_folder(str(folder), {
      "old.txt": lambda p: open(p, "w").write("old"),
      "keep.txt": lambda p: open(p, "w").write("v1")})
  atomic_io.atomic_write_folder(str(folder), {
      "keep.txt": lambda p: open(p, "w").write("v2")})
  assert sorted(os.listdir(folder)) == ["keep.txt"]
  assert (folder / "keep.txt").read_text() == "v2"
  assert sorted(os.listdir(tmp_path)) == ["f"]

  def broken(path):
    open(path, "w").write("partial")
    raise OSError(28, "No space left on device")
  with pytest.raises(InputError, match="no space left on the device"):
    atomic_io.atomic_write_folder(str(folder), {"keep.txt": broken})
  assert (folder / "keep.txt").read_text() == "v2"
  assert sorted(os.listdir(tmp_path)) == ["f"]


def test_leftovers_of_a_killed_writer_are_cleaned(tmp_path):
  stale = tmp_path / "a.bin.tmp-abc123"
  stale.write_bytes(b"half")
  old = time.time() - 3600
  os.utime(stale, (old, old))
  fresh = tmp_path / "a.bin.tmp-live"  # maybe another writer's: kept
  fresh.write_bytes(b"live")
  atomic_io.atomic_write_bytes(str(tmp_path / "a.bin"), b"whole")
  assert sorted(os.listdir(tmp_path)) == ["a.bin", "a.bin.tmp-live"]
  # A folder swap that died between its two renames (no renameat2): the
  # previous folder is put back before anything else happens.
  (tmp_path / "f.tmp-xyz-old").mkdir()
  (tmp_path / "f.tmp-xyz-old" / "w").write_text("previous")
  seen = []

  def write(path):
    seen.append((tmp_path / "f" / "w").read_text())
    open(path, "w").write("new")
  atomic_io.atomic_write_folder(str(tmp_path / "f"), {"w2": write})
  assert seen == ["previous"]
  assert sorted(os.listdir(tmp_path / "f")) == ["w2"]
  assert not (tmp_path / "f.tmp-xyz-old").exists()


def test_folder_swap_without_renameat2(tmp_path, monkeypatch):
  monkeypatch.setattr(atomic_io, "_exchange", lambda a, b: False)
  for version in ("v1", "v2"):
    atomic_io.atomic_write_folder(str(tmp_path / "f"), {
        "w": lambda p, v=version: open(p, "w").write(v)})
  assert (tmp_path / "f" / "w").read_text() == "v2"
  assert sorted(os.listdir(tmp_path)) == ["f"]


def test_write_errors_name_the_target(tmp_path):
  (tmp_path / "d").mkdir()
  with pytest.raises(InputError, match="is a directory"):
    atomic_io.atomic_write_bytes(str(tmp_path / "d"), b"x")
  with pytest.raises(InputError, match="cannot write /sys/hart_jax_x"):
    atomic_io.atomic_write_bytes("/sys/hart_jax_x", b"x")
