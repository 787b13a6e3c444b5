"""`train.init_from` an official HART folder: what can be checked early.

Before a training run builds or writes anything it reads the folder's
config files and the key set and shapes of the weights file it will load
(ema_model.bin first, as the official sampler; then model.safetensors or
pytorch_model.bin) without reading the tensors: a safetensors header, or
a memory-mapped torch pickle (weights_only). A missing, extra or
mis-shaped key is named here, so a broken download fails in seconds and
leaves no half-made workdir; the tensors themselves are read (and checked
again) when the run starts from them.
"""

import json
import os
import struct

import flax

from hart_jax.errors import CheckpointError
from hart_jax.interop import naming
from hart_jax.interop import official_transformer
from hart_jax.interop.official_configs import (load_tokenizer_config,
                                               load_transformer_config)
from hart_jax.interop.state_dict_io import MIN_SAFE_TORCH
from hart_jax.models.hart.config import HartConfig


def weights_file(llm: str) -> str:
  """The file init_from loads (the EMA weights when present)."""
  for name in official_transformer.WEIGHT_FILES:
    if os.path.exists(os.path.join(llm, name)):
      return os.path.join(llm, name)
  raise CheckpointError(f"{llm} has no weights file (looked for "
                        f"{', '.join(official_transformer.WEIGHT_FILES)})")


def stored_shapes(path: str) -> dict[str, tuple[int, ...]]:
  """Key -> shape of a state-dict file, without reading its tensors."""
  if path.endswith(".safetensors"):
    try:
      with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(min(length, 100 * 2**20)))
      return {k: tuple(v["shape"]) for k, v in header.items()
              if k != "__metadata__"}
    except (struct.error, ValueError, TypeError, KeyError) as e:
      raise CheckpointError(f"{path}: not a readable safetensors file "
                            f"({type(e).__name__}: {e})") from e
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise CheckpointError(f"{path} is a torch pickle; reading it needs "
                          "torch (pip install 'hart_jax[torch]')") from e
  major, minor = (int(x) for x in torch.__version__.split(".")[:2])
  if (major, minor) < MIN_SAFE_TORCH:
    raise CheckpointError(f"{path}: torch {torch.__version__} cannot load "
                          "pickles safely; install torch >= 2.6")
  try:
    state = torch.load(path, map_location="cpu", weights_only=True,
                       mmap=True)
  except Exception as e:  # pylint: disable=broad-except  # torch: many types
    reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    raise CheckpointError(f"{path}: cannot be read as a torch state dict "
                          f"({type(e).__name__}: {reason})") from None
  if not isinstance(state, dict):
    raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a "
                          "state dict")
  return {k: tuple(v.shape) for k, v in state.items()}


def expected_shapes(config: HartConfig) -> dict[str, tuple[int, ...]]:
  """Key -> shape of the official state dict of `config`, buffers
  included (computed, not built: the 1024px mask alone is 380 MB)."""
  flat = flax.traverse_util.flatten_dict(official_transformer.abstract_params(
      config.replace(scan_layers=False)))
  out = {official_transformer.param_key(path): naming.torch_shape(
      spec.shape, path[-1]) for path, spec in flat.items()}
  s = config.seq_len
  out.update({"lvl_1L": (1, s), "attn_bias_for_masking": (1, 1, s, s)})
  for i in range(config.depth):
    out[f"blocks.{i}.attn.zero_k_bias"] = (config.embed_dim,)
  return out


def source_config(path: str) -> HartConfig:
  """The transformer config of the official folder `path`, after checking
  its weights file's key set and shapes against it."""
  llm = os.path.join(path, "llm")
  facts = {}
  tok = os.path.join(path, "tokenizer", "config.json")
  if os.path.isfile(tok):
    tok_config = load_tokenizer_config(tok)
    facts = dict(vocab_size=tok_config.vocab_size,
                 latent_channels=tok_config.z_channels)
  config = load_transformer_config(os.path.join(llm, "config.json"), **facts)
  file = weights_file(llm)
  got, want = stored_shapes(file), expected_shapes(config)
  missing = sorted(set(want) - set(got))
  extra = sorted(set(got) - set(want))
  bad = [f"{k}: checkpoint {list(got[k])}, expected {list(want[k])}"
         for k in sorted(set(got) & set(want)) if got[k] != want[k]]
  problems = []
  if missing:
    problems.append(f"missing key(s): {missing[:10]}")
  if extra:
    problems.append(f"unexpected key(s): {extra[:10]}")
  if bad:
    problems.append("mis-shaped key(s): " + "; ".join(bad[:5]))
  if problems:
    raise CheckpointError(f"train.init_from {path}: {file} does not match "
                          "its config.json: " + " | ".join(problems))
  return config
