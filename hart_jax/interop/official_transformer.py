"""Official `llm/` folders <-> hart_jax transformer params (hart_spec.md 4a).

Folder: config.json + ema_model.bin (the EMA weights `sample.py` loads with
strict `load_state_dict`), and model.safetensors / pytorch_model.bin (what
HF `from_pretrained` reads). Export writes every key the official
`HARTForT2I` has, buffers included (`lvl_1L`, `attn_bias_for_masking`, each
block's `attn.zero_k_bias`), so strict loading succeeds.
"""

import dataclasses
import functools
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np

from hart_jax import atomic_io
from hart_jax.errors import CheckpointError
from hart_jax.interop import naming
from hart_jax.interop import state_dict_io
from hart_jax.interop.official_configs import (
    load_transformer_config, transformer_config_to_official)
from hart_jax.models.hart import layer_stack
from hart_jax.models.hart.config import HartConfig
from hart_jax.models.hart.transformer import HartTransformer, level_ids

# Top-level parameters whose official name is not mechanical.
_SPECIAL = {("lvl_embed",): "lvl_embed.weight",
            ("class_emb",): "class_emb.weight"}
# Preference order when reading a folder: the EMA weights are the ones
# the official sampler uses.
WEIGHT_FILES = ("ema_model.bin", "model.safetensors", "pytorch_model.bin")


def param_key(path: tuple[str, ...]) -> str:
  return _SPECIAL.get(path) or naming.torch_key(path)


def buffers(config: HartConfig) -> dict[str, np.ndarray]:
  """The official persistent buffers, derived from the config."""
  lvl = level_ids(config).astype(np.int64)
  bias = np.where(lvl[:, None] >= lvl[None, :], 0.0, -np.inf).astype(
      np.float32)
  out = {"lvl_1L": lvl[None],
         "attn_bias_for_masking": bias[None, None]}
  for i in range(config.depth):
    out[f"blocks.{i}.attn.zero_k_bias"] = np.zeros(config.embed_dim,
                                                   np.float32)
  return out


def example_inputs(config: HartConfig, batch: int = 1):
  """Zero inputs of the right shapes (for init and eval_shape)."""
  t = config.context_token
  context = (jnp.zeros((batch,), jnp.int32) if config.num_classes else
             jnp.zeros((batch, t, config.context_dim), jnp.float32))
  return (context, jnp.ones((batch, t), bool),
          jnp.zeros((batch, t), jnp.int32),
          jnp.zeros((batch, config.image_tokens - 1, config.latent_channels),
                    jnp.float32))


def init_boxed(config: HartConfig, rng: jax.Array):
  """Random params with their logical-axis boxes, in `config`'s layout.

  The scanned layout stacks the unrolled init, so a seed gives the same
  weights whichever layout a run uses.
  """
  unrolled = dataclasses.replace(config, scan_layers=False)
  params = HartTransformer(unrolled).init(
      rng, *example_inputs(config), method=HartTransformer.init_all)["params"]
  return layer_stack.to_layout(params, config.scan_layers, stack=jnp.stack)


def init_params(config: HartConfig, rng: jax.Array):
  """Randomly initialised params (logical-axis boxes removed)."""
  return _init(config, rng)


@functools.partial(jax.jit, static_argnums=0)
def _init(config, rng):
  return flax.core.meta.unbox(init_boxed(config, rng))


def abstract_params(config: HartConfig):
  return jax.eval_shape(lambda: init_params(config, jax.random.key(0)))


def export_state_dict(config: HartConfig, params) -> dict[str, np.ndarray]:
  """Params (either block layout) -> the official state dict (torch
  layouts, buffers included)."""
  out = {}
  params = layer_stack.to_layout(
      jax.device_get(flax.core.meta.unbox(params)), scanned=False)
  for path, value in flax.traverse_util.flatten_dict(params).items():
    value = np.asarray(value, np.float32)
    out[param_key(path)] = naming.to_torch_layout(value, path[-1])
  out.update(buffers(config))
  return out


def import_state_dict(config: HartConfig, state: dict[str, np.ndarray]):
  """Official state dict -> params in the block layout `config` asks for.
  Every mismatch is named in one error."""
  state = dict(state)
  expected_buffers = buffers(config)
  problems, missing, bad_shape, params = [], [], [], {}
  unrolled = dataclasses.replace(config, scan_layers=False)
  for path, spec in flax.traverse_util.flatten_dict(
      abstract_params(unrolled)).items():
    key = param_key(path)
    if key not in state:
      missing.append(key)
      continue
    got = state.pop(key)
    want = naming.torch_shape(spec.shape, path[-1])
    if tuple(got.shape) != want:
      bad_shape.append(f"{key}: checkpoint {list(got.shape)}, expected "
                       f"{list(want)}")
      continue
    params[path] = naming.from_torch_layout(np.asarray(got, np.float32),
                                            path[-1])
  for key, want in expected_buffers.items():
    if key not in state:
      missing.append(key)
      continue
    got = np.asarray(state.pop(key))
    if got.shape != want.shape:
      bad_shape.append(f"{key}: checkpoint {list(got.shape)}, expected "
                       f"{list(want.shape)} (does patch_nums / "
                       "context_token match?)")
    elif not np.array_equal(got.astype(want.dtype), want):
      problems.append(f"buffer {key} differs from the one the config implies "
                      "(patch_nums or context_token mismatch)")
  if missing:
    problems.append(f"missing key(s): {missing[:20]}" + (
        f" and {len(missing) - 20} more" if len(missing) > 20 else ""))
  if bad_shape:
    problems.append("mis-shaped key(s): " + "; ".join(bad_shape[:20]))
  if state:
    problems.append(f"unexpected key(s): {sorted(state)[:20]}")
  if problems:
    raise CheckpointError("transformer checkpoint does not match the "
                          "config: " + " | ".join(problems))
  params = layer_stack.to_layout(flax.traverse_util.unflatten_dict(params),
                                 config.scan_layers)
  return jax.tree.map(jnp.asarray, params)


def load_transformer(folder: str, weights: str | None = None):
  """Official llm/ folder -> (HartConfig, params).

  vocab_size and latent_channels live in the tokenizer, not in
  llm/config.json; they are read off `head.weight` and `word_embed.weight`.
  """
  config_path = os.path.join(folder, "config.json")
  if not os.path.exists(config_path):
    raise CheckpointError(f"{folder}: no config.json (is this an llm "
                          "folder?)")
  if weights is None:
    found = [n for n in WEIGHT_FILES if os.path.exists(
        os.path.join(folder, n))]
    if not found:
      raise CheckpointError(f"{folder}: no weights file (looked for "
                            f"{', '.join(WEIGHT_FILES)})")
    weights = found[0]
  state = state_dict_io.read_state_dict(os.path.join(folder, weights))
  for key in ("head.weight", "word_embed.weight"):
    if key not in state:
      raise CheckpointError(f"{folder}/{weights}: missing key {key!r}")
  config = load_transformer_config(
      config_path, vocab_size=int(state["head.weight"].shape[0]),
      latent_channels=int(state["word_embed.weight"].shape[1]))
  return config, import_state_dict(config, state)


def save_transformer(folder: str, config: HartConfig, params,
                     ema_params=None, write_ema_bin: bool = True,
                     weights_format: str = "safetensors") -> None:
  """Writes an official llm/ folder atomically.

  model.safetensors (or, with weights_format "bin", pytorch_model.bin)
  holds `params`, ema_model.bin (a torch pickle: needs torch) holds
  `ema_params` (default: the same params).
  """
  if weights_format not in ("safetensors", "bin"):
    raise CheckpointError(f"weights_format must be 'safetensors' or 'bin', "
                          f"got {weights_format!r}")
  state = export_state_dict(config, params)
  ema_state = state if ema_params is None else export_state_dict(
      config, ema_params)
  if weights_format == "safetensors":
    writers = {"model.safetensors": lambda p: state_dict_io
               .write_safetensors(p, state)}
  else:
    writers = {"pytorch_model.bin": lambda p: state_dict_io.write_torch_bin(
        p, state)}
  if write_ema_bin or weights_format == "bin":
    try:
      import torch  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError as e:
      raise CheckpointError("writing ema_model.bin / pytorch_model.bin "
                            "needs torch (pip install 'hart_jax[torch]'), "
                            "or pass write_ema_bin=False") from e
    writers["ema_model.bin"] = lambda p: state_dict_io.write_torch_bin(
        p, ema_state)
  writers["config.json"] = lambda p: atomic_io.atomic_write_json(
      p, transformer_config_to_official(config))
  atomic_io.atomic_write_folder(folder, writers)
