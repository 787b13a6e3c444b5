"""Reading and writing torch state dicts without trusting pickles.

safetensors is read by a small validating parser (so bf16 and corrupt files
get clear errors without torch); `pytorch_model.bin` / `ema_model.bin` go
through `torch.load(..., weights_only=True)` only, never plain unpickling.
Writes are atomic: a reader never sees a half-written file, and a failed
write leaves what was there before.
"""

import json
import os
import pickle
import struct
from typing import Mapping

import ml_dtypes
import numpy as np

from hart_jax.atomic_io import atomic_path, atomic_write_bytes
from hart_jax.errors import CheckpointError

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_NUMPY_TO_SAFETENSORS = {np.dtype(v): k for k, v in _SAFETENSORS_DTYPES.items()}


# The first torch whose `weights_only=True` loader is not itself
# exploitable (CVE-2025-32434: torch <= 2.5.1 runs code from a crafted
# file even with weights_only=True).
MIN_SAFE_TORCH = (2, 6)
_HEADER_LIMIT = 100 * 2**20


def _entry_problem(name: str, info, data_size: int):
  """Why one safetensors header entry is unusable, or None."""
  if not isinstance(info, dict):
    return f"is {type(info).__name__}, not an object"
  missing = {"dtype", "shape", "data_offsets"} - set(info)
  if missing:
    return f"lacks {sorted(missing)}"
  if info["dtype"] not in _SAFETENSORS_DTYPES:
    return (f"has dtype {info['dtype']!r}, not one of "
            f"{sorted(_SAFETENSORS_DTYPES)}")
  shape, offsets = info["shape"], info["data_offsets"]
  if not isinstance(shape, list) or not all(
      isinstance(d, int) and not isinstance(d, bool) and d >= 0
      for d in shape):
    return f"has shape {shape!r}, not a list of non-negative integers"
  if (not isinstance(offsets, list) or len(offsets) != 2 or not all(
      isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
    return f"has data_offsets {offsets!r}, not two integers"
  begin, end = offsets
  itemsize = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]]).itemsize
  expected = int(np.prod(shape, dtype=np.int64)) * itemsize
  if not 0 <= begin <= end <= data_size or end - begin != expected:
    return (f"{info['dtype']}{shape} has bytes [{begin}, {end}) that do not "
            f"fit the file's {data_size} data bytes (truncated or corrupt)")
  del name
  return None


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """All tensors of a .safetensors file as numpy arrays.

  The header is validated entry by entry (the first bad one is named) and
  each tensor is read straight into its own array, so the file's bytes
  are never held twice.
  """
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    raw_len = f.read(8)
    if len(raw_len) < 8:
      raise CheckpointError(f"{path}: too short to be a safetensors file")
    (header_len,) = struct.unpack("<Q", raw_len)
    if header_len > size - 8 or header_len > _HEADER_LIMIT:
      raise CheckpointError(f"{path}: corrupt safetensors header length "
                            f"{header_len} (file has {size} bytes)")
    try:
      header = json.loads(f.read(header_len))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise CheckpointError(f"{path}: corrupt safetensors header: {e}") from e
    if not isinstance(header, dict):
      raise CheckpointError(f"{path}: the safetensors header is a "
                            f"{type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(v, str) for v in metadata.values()):
      raise CheckpointError(f"{path}: __metadata__ must map names to "
                            "strings")
    data_start, data_size = 8 + header_len, size - 8 - header_len
    for name, info in header.items():
      problem = _entry_problem(name, info, data_size)
      if problem:
        raise CheckpointError(f"{path}: tensor {name!r} {problem}")
    out = {}
    for name, info in sorted(header.items(),
                             key=lambda kv: kv[1]["data_offsets"][0]):
      dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
      array = np.empty(info["shape"], dtype)
      begin, end = info["data_offsets"]
      f.seek(data_start + begin)
      if f.readinto(memoryview(array.reshape(-1).view(np.uint8))) != (
          end - begin):
        raise CheckpointError(f"{path}: tensor {name!r} is truncated")
      out[name] = array
  return out


def _torch_version(torch) -> tuple[int, int]:
  major, minor = torch.__version__.split("+")[0].split(".")[:2]
  return int(major), int(minor)


def read_torch_bin(path: str) -> dict[str, np.ndarray]:
  """A torch-saved state dict, loaded with weights_only=True only."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise CheckpointError(
        f"{path} is a torch pickle; reading it needs torch (pip install "
        "'hart_jax[torch]'), or convert it to safetensors") from e
  if _torch_version(torch) < MIN_SAFE_TORCH:
    raise CheckpointError(
        f"{path} is a torch pickle, and torch {torch.__version__} cannot "
        "load pickles safely (CVE-2025-32434); install torch >= "
        f"{'.'.join(map(str, MIN_SAFE_TORCH))} or convert the file to "
        "safetensors with a trusted tool")
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    # torch's own advice here is to retry with weights_only=False, i.e.
    # to run whatever the file contains: never give that advice.
    detail = next((line.strip().rstrip(".") for line in str(e).splitlines()
                   if "GLOBAL" in line or "global" in line), "")
    raise CheckpointError(
        f"{path}: refused to load: the pickle holds more than tensors"
        + (f" ({detail})" if detail else "") + ". If you trust its source, "
        "convert it to safetensors in a sandbox; hart_jax never unpickles "
        "code") from None
  except Exception as e:  # torch raises many types for bad files
    raise CheckpointError(f"{path}: cannot be read as a torch state dict "
                          f"({type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0][:200]})") from e
  if not isinstance(state, Mapping):
    raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a "
                          "state dict")
  out = {}
  for k, v in state.items():
    if not isinstance(v, torch.Tensor):
      raise CheckpointError(f"{path}: entry {k!r} is not a tensor")
    if v.dtype == torch.bfloat16:
      out[k] = v.float().numpy().astype(ml_dtypes.bfloat16)
    else:
      out[k] = v.detach().cpu().numpy()
  return out


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  if not os.path.exists(path):
    raise CheckpointError(f"checkpoint file not found: {path}")
  if path.endswith(".safetensors"):
    return read_safetensors(path)
  return read_torch_bin(path)


def _safetensors_bytes(tensors: Mapping[str, np.ndarray],
                       metadata: Mapping[str, str] | None) -> bytes:
  header, chunks, offset = {}, [], 0
  if metadata:
    header["__metadata__"] = dict(metadata)
  for name in sorted(tensors):
    arr = np.asarray(tensors[name])
    # ascontiguousarray would turn a 0-d buffer (num_batches_tracked) 1-d.
    arr = np.ascontiguousarray(arr).reshape(arr.shape)
    if arr.dtype not in _NUMPY_TO_SAFETENSORS:
      raise CheckpointError(f"cannot store {name!r} of dtype {arr.dtype}")
    buf = arr.tobytes()
    header[name] = dict(dtype=_NUMPY_TO_SAFETENSORS[arr.dtype],
                        shape=list(arr.shape),
                        data_offsets=[offset, offset + len(buf)])
    chunks.append(buf)
    offset += len(buf)
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)  # the format aligns the data to 8 bytes
  return struct.pack("<Q", len(raw)) + raw + b"".join(chunks)


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray]) -> None:
  # transformers only loads safetensors whose metadata says format "pt".
  atomic_write_bytes(path, _safetensors_bytes(tensors, {"format": "pt"}))


def write_torch_bin(path: str, tensors: Mapping[str, np.ndarray]) -> None:
  """torch.save of the state dict (what `ema_model.bin` readers expect)."""
  import torch  # pylint: disable=g-import-not-at-top
  state = {k: torch.from_numpy(np.array(v, copy=True))
           for k, v in tensors.items()}
  with atomic_path(path) as tmp:
    torch.save(state, tmp)
