r"""Text features computed once per caption and read by training.

A large frozen encoder (HART's Qwen2) costs more than it is worth inside
every step when the captions repeat; its features are stored once per
unique caption in an .npz:

  captions  str [N]          the unique captions, sorted
  features  float [N, T, D]  encoder output (zero beyond the mask)
  mask      bool [N, T]

Written from any in-step encoder of a training config:

  python -m hart_jax.cache_text_features --config=tiny:cond=text \
      --out=DIR/features.npz

then used with `--config.text_encoder.kind=cache
--config.text_encoder.cache.path=DIR/features.npz`.
"""

import os
import zipfile
from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hart_jax import atomic_io
from hart_jax.errors import InputError
from hart_jax.text.encoders import TextEncoder, position_ids


class FeatureCacheError(InputError):
  """A feature cache file that cannot be used, with the reason."""


class CachedTextFeatures(TextEncoder):
  """Looks captions up on the host; the step only reads the arrays."""

  def __init__(self, context_dim: int, max_length: int, path: str = ""):
    super().__init__(context_dim, max_length)
    captions, self.features, self.mask = read_feature_cache(path)
    if self.features.shape[1:] != (max_length, context_dim):
      raise FeatureCacheError(
          f"{path}: features are [N, {self.features.shape[1]}, "
          f"{self.features.shape[2]}] but the model wants [N, {max_length}, "
          f"{context_dim}] (context_token, context_dim)")
    self.row = {c: i for i, c in enumerate(captions)}

  def host_inputs(self, captions: Sequence[str]) -> dict[str, np.ndarray]:
    missing = sorted({c for c in captions if c and c not in self.row})
    if missing:
      raise FeatureCacheError(
          f"{len(missing)} caption(s) not in the feature cache, e.g. "
          f"{missing[:3]}; rebuild it for this dataset")
    feats = np.zeros((len(captions),) + self.features.shape[1:],
                     np.float32)
    mask = np.zeros((len(captions), self.max_length), bool)
    for i, caption in enumerate(captions):
      if caption:  # "" pads a partial batch: no tokens
        feats[i] = self.features[self.row[caption]]
        mask[i] = self.mask[self.row[caption]]
    return {"context": feats, "context_mask": mask}

  def encode(self, params, inputs):
    del params
    mask = inputs["context_mask"]
    return (inputs["context"].astype(jnp.float32), mask,
            position_ids(mask))


def read_feature_cache(path: str):
  """(captions, features, mask) of a cache file; one clear error if not."""
  if not path:
    raise FeatureCacheError("text_encoder.cache.path is empty: build a "
                            "cache with python -m hart_jax."
                            "cache_text_features")
  if not os.path.exists(path):
    raise FeatureCacheError(f"{path}: no such feature cache")
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {k: data[k] for k in ("captions", "features", "mask")}
  except KeyError as e:
    raise FeatureCacheError(f"{path}: missing array {e}") from e
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise FeatureCacheError(f"{path}: not a readable feature cache ({e})"
                            ) from e
  n = len(arrays["captions"])
  if (arrays["features"].ndim != 3 or arrays["features"].shape[0] != n
      or arrays["mask"].shape != arrays["features"].shape[:2]):
    raise FeatureCacheError(
        f"{path}: inconsistent shapes captions {arrays['captions'].shape}, "
        f"features {arrays['features'].shape}, mask {arrays['mask'].shape}")
  return ([str(c) for c in arrays["captions"]], arrays["features"],
          arrays["mask"].astype(bool))


def write_feature_cache(path: str, encoder: TextEncoder,
                        captions: Iterable[str], batch_size: int = 256,
                        dtype=np.float32) -> int:
  """Encodes every unique caption with `encoder`; returns their number.

  Written atomically: an interrupted run leaves the old file (if any).
  """
  unique = sorted({str(c) for c in captions if c})
  if not unique:
    raise InputError("the data source has no captions to encode")
  params = encoder.init_params(jax.random.key(0))
  encode = jax.jit(encoder.encode)
  feats, masks = [], []
  for start in range(0, len(unique), batch_size):
    chunk = unique[start:start + batch_size]
    # Pad to a full batch: one compiled shape for every chunk.
    padded = chunk + [""] * (batch_size - len(chunk))
    f, m, _ = encode(params, encoder.host_inputs(padded))
    feats.append(np.asarray(f)[:len(chunk)].astype(dtype))
    masks.append(np.asarray(m)[:len(chunk)])
  with atomic_io.atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      np.savez(f, captions=np.array(unique, dtype=np.str_),
               features=np.concatenate(feats), mask=np.concatenate(masks))
  return len(unique)


def captions_of(source) -> list[str]:
  """Every caption of a data source (by its `caption(i)` when it has one,
  which skips decoding the images)."""
  if hasattr(source, "caption"):
    return [source.caption(i) for i in range(len(source))]
  return [source[i]["caption"] for i in range(len(source))]
