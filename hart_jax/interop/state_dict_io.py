"""Reading and writing torch state dicts without trusting pickles.

safetensors is read by a small validating parser (so bf16 and corrupt files
get clear errors without torch); `pytorch_model.bin` / `ema_model.bin` go
through `torch.load(..., weights_only=True)` only, never plain unpickling.
Writes are atomic: a reader never sees a half-written file, and a failed
write leaves what was there before.
"""

import json
import os
import struct
from typing import Mapping

import ml_dtypes
import numpy as np

from hart_jax.atomic_io import atomic_path, atomic_write_bytes

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_NUMPY_TO_SAFETENSORS = {np.dtype(v): k for k, v in _SAFETENSORS_DTYPES.items()}


class CheckpointError(ValueError):
  """A checkpoint file or its contents do not match what was expected."""


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """All tensors of a .safetensors file as numpy arrays (validated)."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    raw_len = f.read(8)
    if len(raw_len) < 8:
      raise CheckpointError(f"{path}: too short to be a safetensors file")
    (header_len,) = struct.unpack("<Q", raw_len)
    if header_len > size - 8 or header_len > 100 * 2**20:
      raise CheckpointError(f"{path}: corrupt safetensors header length "
                            f"{header_len} (file has {size} bytes)")
    try:
      header = json.loads(f.read(header_len))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise CheckpointError(f"{path}: corrupt safetensors header: {e}") from e
    data = f.read()
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    try:
      dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
      shape = tuple(int(d) for d in info["shape"])
      begin, end = (int(o) for o in info["data_offsets"])
    except (KeyError, TypeError, ValueError) as e:
      raise CheckpointError(f"{path}: bad header entry for {name!r}: {info}"
                            ) from e
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if not 0 <= begin <= end <= len(data) or end - begin != expected:
      raise CheckpointError(f"{path}: tensor {name!r} {info['dtype']}"
                            f"{list(shape)} has bytes [{begin}, {end}) that "
                            f"do not fit the file (truncated or corrupt)")
    out[name] = np.frombuffer(data[begin:end], dtype).reshape(shape).copy()
  return out


def read_torch_bin(path: str) -> dict[str, np.ndarray]:
  """A torch-saved state dict, loaded with weights_only=True."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise CheckpointError(
        f"{path} is a torch pickle; reading it needs torch (pip install "
        "'hart_jax[torch]'), or convert it to safetensors") from e
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types for bad files
    raise CheckpointError(f"{path}: cannot be read as a torch state dict "
                          f"(weights_only=True): {e}") from e
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
