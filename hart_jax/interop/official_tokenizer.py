"""Official tokenizer folders (`tokenizer/`) <-> hart_jax variables.

Folder: config.json + model.safetensors (or pytorch_model.bin), keys
`vae.*` and `disc.*` (hart_spec.md 4b). Keys without the `vae.` prefix are
accepted too (some forks strip it). Export writes every key and buffer the
official `HARTAutoEncoderWithDisc` has, so it loads with strict matching.

The variables are a dict:
  {"vae": {"params": ..., "buffers": ...},
   "disc": {"params": ..., "batch_stats": ...}}
"""

import functools
import logging
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from hart_jax import atomic_io
from hart_jax.errors import CheckpointError, ConfigError
from hart_jax.interop import naming
from hart_jax.interop import state_dict_io
from hart_jax.interop.official_configs import (load_tokenizer_config,
                                               tokenizer_config_to_official)
from hart_jax.models.tokenizer.config import TokenizerConfig
from hart_jax.models.tokenizer.discriminator import PatchDiscriminator
from hart_jax.models.tokenizer.model import HybridTokenizer

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _phi_name(config: TokenizerConfig, i: int) -> str:
  if config.share_quant_resi == 1:
    return "quant_resi.qresi"
  if config.share_quant_resi == 0:
    return f"quant_resi.{i}"
  return f"quant_resi.qresi_ls.{i}"


def _key(config: TokenizerConfig, part: str, collection: str,
         path: tuple[str, ...]) -> str:
  """Official key of one flax leaf of the `vae` or `disc` variables."""
  if path[:2] == ("quantize", "ema_vocab_hit_SV"):
    return f"{part}.quantize.ema_vocab_hit_SV"
  if path[0] == "quantize" and path[1].startswith("phi_"):
    i = int(path[1].split("_")[1])
    return f"{part}.quantize.{_phi_name(config, i)}.{naming.torch_key(path[2:])}"
  del collection  # leaf names are unique across collections
  return f"{part}.{naming.torch_key(path)}"


def init_variables(config: TokenizerConfig, rng: jax.Array) -> dict[str, Any]:
  """Randomly initialised tokenizer + discriminator variables."""
  rng_vae, rng_disc = jax.random.split(rng)
  return {"vae": _init_vae(config, rng_vae), "disc": _init_disc(rng_disc)}


def _init_images(config: TokenizerConfig) -> jax.Array:
  # Weights do not depend on the image size: initialise on the smallest
  # image both networks accept (the discriminator needs 32px to keep a
  # non-empty map after its stride-2 convs), not a full-resolution one.
  side = max(config.downsample, 32)
  return jnp.zeros((1, side, side, config.in_channels), jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def _init_vae(config: TokenizerConfig, rng: jax.Array) -> dict[str, Any]:
  return flax.core.unfreeze(HybridTokenizer(config).init(
      rng, _init_images(config), method=HybridTokenizer.init_all))


@jax.jit
def _init_disc(rng: jax.Array) -> dict[str, Any]:
  images = jnp.zeros((1, 32, 32, 3), jnp.float32)
  return flax.core.unfreeze(PatchDiscriminator().init(rng, images))


def abstract_variables(config: TokenizerConfig) -> dict[str, Any]:
  return jax.eval_shape(lambda: init_variables(config, jax.random.key(0)))


def _flat_entries(config: TokenizerConfig, variables):
  """Yields (torch key, part, flat flax path, leaf value) for every leaf."""
  for part in ("vae", "disc"):
    flat = flax.traverse_util.flatten_dict(variables[part])
    for path, value in flat.items():
      collection, rest = path[0], path[1:]
      yield _key(config, part, collection, rest), part, path, value


def export_state_dict(config: TokenizerConfig,
                      variables) -> dict[str, np.ndarray]:
  """Variables -> the official state dict (torch layouts, all buffers)."""
  out = {}
  for key, _, path, value in _flat_entries(config, variables):
    value = np.asarray(jax.device_get(value))
    if path[-1] == "num_batches_tracked":
      value = value.astype(np.int64)
    elif value.dtype != np.float32:
      value = value.astype(np.float32)
    out[key] = naming.to_torch_layout(value, path[-1])
  return out


def import_state_dict(config: TokenizerConfig, state: dict[str, np.ndarray],
                      rng: jax.Array | None = None):
  """Official state dict -> variables. Mismatches raise, naming the key.

  A state dict without any `disc.*` key is accepted (the official loader
  initialises the discriminator itself); the discriminator is then
  initialised from `rng` and a warning says so.
  """
  state = dict(state)
  if state and not any(k.startswith(("vae.", "disc.")) for k in state):
    state = {f"vae.{k}": v for k, v in state.items()}
  abstract = abstract_variables(config)
  has_disc = any(k.startswith("disc.") for k in state)
  fresh = None
  if not has_disc:
    logging.warning("no disc.* tensors in the checkpoint: the "
                    "discriminator is randomly initialised")
    fresh = {"disc": _init_disc(rng if rng is not None
                                else jax.random.key(0))}
  result = {"vae": {}, "disc": {}}
  missing, bad_shape = [], []
  for key, part, path, spec in _flat_entries(config, abstract):
    if part == "disc" and not has_disc:
      value = flax.traverse_util.flatten_dict(fresh["disc"])[path]
    elif key not in state:
      missing.append(key)
      continue
    else:
      want = naming.torch_shape(spec.shape, path[-1])
      got = state.pop(key)
      if tuple(got.shape) != want:
        bad_shape.append(f"{key}: checkpoint {list(got.shape)}, expected "
                         f"{list(want)}")
        continue
      value = naming.from_torch_layout(np.asarray(got), path[-1]).astype(
          spec.dtype)
    result[part][path] = value
  problems = []
  if missing:
    problems.append(f"missing key(s): {missing[:20]}"
                    + (f" and {len(missing) - 20} more" if len(missing) > 20
                       else ""))
  if bad_shape:
    problems.append("mis-shaped key(s): " + "; ".join(bad_shape[:20]))
  if state:
    extra = sorted(state)
    problems.append(f"unexpected key(s): {extra[:20]}"
                    + (f" and {len(extra) - 20} more" if len(extra) > 20
                       else ""))
  if problems:
    raise CheckpointError("tokenizer checkpoint does not match the config: "
                          + " | ".join(problems))
  return {part: flax.traverse_util.unflatten_dict(
      {p: jnp.asarray(v) for p, v in leaves.items()})
          for part, leaves in result.items()}


def find_weights(folder: str) -> str:
  for name in WEIGHT_FILES:
    path = os.path.join(folder, name)
    if os.path.exists(path):
      return path
  raise CheckpointError(f"{folder}: no weights file (looked for "
                        f"{', '.join(WEIGHT_FILES)})")


def load_tokenizer(folder: str, rng: jax.Array | None = None):
  """Official tokenizer folder -> (TokenizerConfig, variables)."""
  config_path = os.path.join(folder, "config.json")
  if not os.path.exists(config_path):
    raise CheckpointError(f"{folder}: no config.json (is this a tokenizer "
                          "folder?)")
  config = load_tokenizer_config(config_path)
  state = state_dict_io.read_state_dict(find_weights(folder))
  return config, import_state_dict(config, state, rng)


def save_tokenizer(folder: str, config: TokenizerConfig, variables,
                   weights_format: str = "safetensors") -> None:
  """Writes an official tokenizer folder atomically (config + weights)."""
  state = export_state_dict(config, variables)
  if weights_format == "safetensors":
    name, write = "model.safetensors", state_dict_io.write_safetensors
  elif weights_format == "bin":
    name, write = "pytorch_model.bin", state_dict_io.write_torch_bin
  else:
    raise ConfigError(f"weights_format must be 'safetensors' or 'bin', got "
                      f"{weights_format!r}")
  # The folder is replaced whole, so no weights file of the other format
  # survives to shadow or contradict the new one.
  atomic_io.atomic_write_folder(folder, {
      name: lambda p: write(p, state),
      "config.json": lambda p: atomic_io.atomic_write_json(
          p, tokenizer_config_to_official(config)),
  })


def load_frozen_tokenizer(config):
  """(TokenizerConfig, vae variables) from a training config's `tokenizer`
  section: an official folder, or a random one of the shape in `model`.

  A random tokenizer (tests) comes from config.seed alone, so everything
  that builds it (the stage, the token-cache CLI) gets the same one.
  """
  tok_config, variables = frozen_tokenizer_variables(config)
  return tok_config, variables["vae"]


def frozen_tokenizer_variables(config):
  """load_frozen_tokenizer's tokenizer with its discriminator (all the
  variables an official tokenizer/ folder holds, for export)."""
  rng = jax.random.split(jax.random.key(config.seed))[0]
  tc = config.tokenizer
  if tc.get("folder"):
    tok_config, variables = load_tokenizer(tc.folder)
    logging.info("tokenizer loaded from %s", tc.folder)
  elif tc.get("model"):
    # Tests and smoke runs: a random tokenizer of the configured shape.
    tok_config = TokenizerConfig(**dict(tc.model))
    variables = init_variables(tok_config, rng)
    logging.warning("no tokenizer folder configured: using a RANDOM "
                    "tokenizer (fine for tests, useless for real training)")
  else:
    raise ConfigError("config.tokenizer.folder is empty: point it at a HART "
                      "tokenizer/ folder (official, or exported by the "
                      "tokenizer stage)")
  return tok_config, variables
