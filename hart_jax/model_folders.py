"""Everything sampling needs, from a training workdir or official folders.

`load_model(path)` accepts:
  * a hart_jax HART-stage workdir (`checkpoints/` and the run's
    `config.json`): the newest checkpoint (or `step`), EMA weights by
    default; the tokenizer and text encoder its config names;
  * the demo's workdir (`hart/` and `tokenizer/` inside): its HART stage;
  * an official HART folder (`llm/` + `tokenizer/`, as downloaded from
    mit-han-lab/hart-0.7b-1024px), with a Qwen2 text-encoder folder.
"""

import dataclasses
import logging
import os
from typing import Any, Optional

import ml_collections

from hart_jax import checkpointing
from hart_jax import run_config
from hart_jax.errors import CheckpointError, ConfigError, InputError
from hart_jax.interop import official_tokenizer, official_transformer
from hart_jax.models.hart import layer_stack
from hart_jax.models.hart.config import HartConfig, from_config_dict
from hart_jax.models.tokenizer.config import TokenizerConfig
from hart_jax.text.encoders import TextEncoder, make_text_encoder

WEIGHTS = ("ema", "raw")


@dataclasses.dataclass
class LoadedModel:
  """A transformer, its tokenizer and (text models) its text encoder."""
  t_config: HartConfig
  t_params: Any
  tok_config: TokenizerConfig
  tok_vars: Any                     # the tokenizer's `vae` variables
  encoder: Optional[TextEncoder]    # None for class-conditional models
  text_params: Any
  source: dict[str, Any]            # what was loaded, for the record


def load_model(path: str, text_encoder: Optional[str] = None,
               step: Optional[int] = None, weights: str = "ema"
               ) -> LoadedModel:
  """See the module docstring; every wrong path is one clear error."""
  if weights not in WEIGHTS:
    raise ConfigError(f"weights must be one of {WEIGHTS}, got {weights!r}")
  if not path or not os.path.isdir(path):
    raise InputError(f"checkpoint {path!r}: no such directory")
  if os.path.isfile(os.path.join(path, "llm", "config.json")):
    if step is not None:
      raise ConfigError(f"{path} is an official folder: it has no steps "
                        "to choose from")
    return _load_official(path, text_encoder, weights)
  if (not os.path.isdir(os.path.join(path, "checkpoints"))
      and os.path.isdir(os.path.join(path, "hart", "checkpoints"))):
    path = os.path.join(path, "hart")  # the demo: its HART stage
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return _load_workdir(path, text_encoder, step, weights)
  raise InputError(
      f"{path} is neither a hart_jax training workdir (with checkpoints/) "
      "nor an official HART folder (with llm/ and tokenizer/)")


def _load_official(path, text_encoder, weights) -> LoadedModel:
  tok_dir = os.path.join(path, "tokenizer")
  if not os.path.isdir(tok_dir):
    raise InputError(f"{path} has llm/ but no tokenizer/ folder")
  llm = os.path.join(path, "llm")
  file = None if weights == "ema" else "model.safetensors"
  if weights == "ema" and not os.path.exists(os.path.join(
      llm, "ema_model.bin")):
    logging.warning("%s has no ema_model.bin: using its other weights", llm)
  t_config, t_params = official_transformer.load_transformer(llm, file)
  tok_config, tok_vars = official_tokenizer.load_tokenizer(tok_dir)
  encoder = text_params = None
  if not t_config.num_classes:
    if not text_encoder:
      raise ConfigError(
          f"{path} is a text-to-image model: pass its text encoder folder "
          "(a local copy of mit-han-lab/Qwen2-VL-1.5B-Instruct: config.json,"
          " model.safetensors, tokenizer.json) as text_encoder / "
          "--text_encoder")
    encoder = make_text_encoder(
        ml_collections.ConfigDict(dict(kind="qwen2", qwen2=dict(
            path=text_encoder))), t_config.context_dim,
        t_config.context_token)
    text_params = encoder.init_params(None)
  return LoadedModel(t_config, t_params, tok_config, tok_vars["vae"],
                     encoder, text_params,
                     dict(kind="official", path=os.path.abspath(path),
                          weights=weights, text_encoder=text_encoder))


def _load_workdir(path, text_encoder, step, weights) -> LoadedModel:
  config = run_config.load_run_config(path)
  if config.get("stage") != "hart":
    raise InputError(f"{path} is a {config.get('stage')}-stage run: only "
                     "HART-stage runs generate images")
  missing = [k for k in ("model", "tokenizer") if k not in config]
  if missing:
    raise CheckpointError(f"{path}/{run_config.FILE} has no {missing} "
                          "section(s): not a complete run config")
  t_config = from_config_dict(config.model)
  key = "ema_params" if weights == "ema" else "params"
  found_step, items = checkpointing.read_state_items(path, (key,), step)
  # Sampling runs the blocks unrolled (the KV caches are per block): a
  # scanned run's stacked params are split back.
  t_config = dataclasses.replace(t_config, scan_layers=False)
  t_params = layer_stack.to_layout(items[key], scanned=False)
  tok_config, tok_vars = official_tokenizer.load_frozen_tokenizer(config)
  encoder = text_params = None
  if not t_config.num_classes:
    spec = config.get("text_encoder")
    if text_encoder:
      spec = ml_collections.ConfigDict(dict(kind="qwen2", qwen2=dict(
          path=text_encoder)))
    elif spec is None or spec.kind == "cache":
      raise ConfigError(
          f"{path} was trained on precomputed text features, which cannot "
          "encode new prompts: pass the encoder that made them (a Qwen2 "
          "folder) as text_encoder / --text_encoder")
    encoder = make_text_encoder(spec, t_config.context_dim,
                                t_config.context_token)
    text_params = encoder.init_params(None)
  return LoadedModel(t_config, t_params, tok_config, tok_vars, encoder,
                     text_params,
                     dict(kind="workdir", path=os.path.abspath(path),
                          step=int(found_step), weights=weights,
                          text_encoder=text_encoder))
