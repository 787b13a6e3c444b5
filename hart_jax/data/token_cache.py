r"""Tokenizer outputs computed once, for HART training without the encoder.

The frozen tokenizer's encoder is most of a HART step's cost at small
batch; its outputs for a fixed dataset never change. A token cache holds,
per example, what the step needs (hart_spec.md 2.8):

  tokens.npy    uint16 [N, L]       every scale's indices, concatenated
  frest.npy     float [N, P*P, C]   the latent before the last scale's
                                     quantisation (`last_layer_gt`)
  labels.npy    int32 [N]
  captions.npy  str [N]
  meta.json     patch_nums, latent_channels, vocab_size, and the SHA-256
                of the tokenizer's codebook + phi weights it was made with

  python -m hart_jax.cache_tokens --config=X --out=DIR

encodes `config.data` (in source order, one epoch, no augmentation) with
`config.tokenizer`; train on it with `--config.data.source=tokens:DIR`.
The step rebuilds the teacher-forcing input from the indices with the same
frozen quantizer, so a cached run equals an in-step one on the same
examples. Written atomically (a folder that appears whole, or not at all).
"""

import hashlib
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from hart_jax import atomic_io
from hart_jax.errors import InputError

class TokenCacheError(InputError):
  """A token cache that cannot be used, with the reason."""


def tokenizer_fingerprint(tok_vars) -> str:
  """SHA-256 of the weights that define the tokens (codebook and phi)."""
  quant = tok_vars["params"]["quantize"]
  digest = hashlib.sha256()
  for path, leaf in sorted(
      jax.tree_util.tree_flatten_with_path(quant)[0],
      key=lambda item: jax.tree_util.keystr(item[0])):
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
  return digest.hexdigest()


def split_scales(tokens: jax.Array, patch_nums) -> list[jax.Array]:
  """[B, L] concatenated indices -> list of [B, pn*pn] (int32)."""
  out, start = [], 0
  for pn in patch_nums:
    out.append(tokens[:, start:start + pn * pn].astype(jnp.int32))
    start += pn * pn
  return out


class TokenCacheSource:
  """Random access to a token cache (memory-mapped)."""

  def __init__(self, path):
    self.path = pathlib.Path(path)
    self.meta = read_meta(self.path)
    self._arrays = None

  def _open(self):
    try:
      self._arrays = {name: np.load(self.path / f"{name}.npy", mmap_mode="r")
                      for name in ("tokens", "frest", "labels", "captions")}
    except (OSError, ValueError) as e:
      raise TokenCacheError(f"{self.path}: unreadable token cache ({e})"
                            ) from e
    n = self.meta["num_examples"]
    for name, array in self._arrays.items():
      if len(array) != n:
        raise TokenCacheError(f"{self.path}/{name}.npy has {len(array)} "
                              f"rows, meta.json says {n}")

  def __len__(self) -> int:
    return self.meta["num_examples"]

  def __getitem__(self, index: int) -> dict:
    if self._arrays is None:
      self._open()
    a = self._arrays
    return {"tokens": np.asarray(a["tokens"][index], np.int32),
            "frest": np.asarray(a["frest"][index], np.float32),
            "label": np.int32(a["labels"][index]),
            "caption": str(a["captions"][index])}

  def __getstate__(self):
    # Workers map the files themselves.
    return {**self.__dict__, "_arrays": None}

  def __repr__(self) -> str:
    return f"TokenCacheSource('{self.path}')"


def read_meta(path: pathlib.Path) -> dict:
  meta_path = pathlib.Path(path) / "meta.json"
  if not meta_path.exists():
    raise TokenCacheError(f"{path}: no meta.json (not a token cache; make "
                          "one with python -m hart_jax.cache_tokens)")
  try:
    meta = json.loads(meta_path.read_text())
    meta["patch_nums"] = tuple(meta["patch_nums"])
    int(meta["num_examples"])
  except (ValueError, KeyError, TypeError) as e:
    raise TokenCacheError(f"{meta_path}: unreadable ({e})") from e
  return meta


def check_compatible(meta: dict, patch_nums, latent_channels: int,
                     fingerprint: str, where: str) -> None:
  """One error naming every way a cache does not fit this model."""
  problems = []
  if tuple(meta["patch_nums"]) != tuple(patch_nums):
    problems.append(f"patch_nums {list(meta['patch_nums'])} != model "
                    f"{list(patch_nums)}")
  if meta.get("latent_channels") != latent_channels:
    problems.append(f"latent_channels {meta.get('latent_channels')} != "
                    f"{latent_channels}")
  if meta.get("tokenizer_sha256") != fingerprint:
    problems.append("made with a different tokenizer (codebook/phi "
                    "fingerprint differs)")
  if problems:
    raise TokenCacheError(f"token cache {where} does not fit this run: "
                          + "; ".join(problems))


def write_token_cache(out: str, tokenizer, tok_vars, dataset_iter,
                      patch_nums, frest_dtype=np.float32) -> int:
  """Tokenizes every valid example of `dataset_iter` (batches from
  `make_dataset(..., shuffle=False, num_epochs=1, drop_remainder=False)`)
  and writes the cache folder atomically; returns the example count."""
  from hart_jax.models.tokenizer import HybridTokenizer  # pylint: disable=g-import-not-at-top
  encode = jax.jit(lambda v, images: tokenizer.apply(
      v, images, patch_nums, method=HybridTokenizer.tokenize))
  tokens, frest, labels, captions = [], [], [], []
  for batch in dataset_iter:
    out_b = encode(tok_vars, jnp.asarray(batch["image"]))
    valid = np.asarray(batch["valid"])
    flat = np.concatenate([np.asarray(i) for i in out_b["indices"]], 1)
    tokens.append(flat[valid].astype(np.uint16))
    frest.append(np.asarray(out_b["frest_before_last"])[valid].astype(
        frest_dtype))
    labels.append(np.asarray(batch["label"])[valid])
    captions.extend(np.asarray(batch["caption"])[valid].tolist())
  if not tokens:
    raise ValueError("the dataset yielded no examples")
  vocab = int(tok_vars["params"]["quantize"]["embedding"].shape[0])
  if vocab > 65536:
    raise ValueError(f"vocab {vocab} does not fit uint16 tokens")
  arrays = {"tokens": np.concatenate(tokens), "frest": np.concatenate(frest),
            "labels": np.concatenate(labels).astype(np.int32),
            "captions": np.array(captions, dtype=np.str_)}
  meta = {"num_examples": int(len(arrays["tokens"])),
          "patch_nums": [int(p) for p in patch_nums],
          "latent_channels": int(arrays["frest"].shape[-1]),
          "vocab_size": vocab,
          "tokenizer_sha256": tokenizer_fingerprint(tok_vars)}

  def npy_writer(name):
    def write(path):
      with open(path, "wb") as f:
        np.save(f, arrays[name])
    return write

  writers = {f"{name}.npy": npy_writer(name) for name in arrays}
  writers["meta.json"] = lambda p: atomic_io.atomic_write_json(p, meta)
  atomic_io.atomic_write_folder(out, writers)
  return meta["num_examples"]
