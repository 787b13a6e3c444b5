"""Loading the golden transformer_tiny models once per test session."""

import functools

import numpy as np

from hart_jax.interop import official_tokenizer
from hart_jax.interop import official_transformer
from hart_jax.interop.state_dict_io import read_safetensors
from hart_jax.interop.official_configs import load_transformer_config


@functools.lru_cache(maxsize=None)
def tokenizer(golden_dir):
  return official_tokenizer.load_tokenizer(
      str(golden_dir / "transformer_tiny" / "tokenizer"))


@functools.lru_cache(maxsize=None)
def model(golden_dir, name):
  """(config, params) of A, B or A_pn6 (A's weights, its own schedule)."""
  root = golden_dir / "transformer_tiny"
  if name != "A_pn6":
    return official_transformer.load_transformer(str(root / name),
                                                 "model.safetensors")
  state = read_safetensors(str(root / "A" / "model.safetensors"))
  tf = np.load(root / "A_pn6" / "train_forward.npz")
  state["lvl_1L"] = tf["buffer_lvl_1L"]
  state["attn_bias_for_masking"] = tf["buffer_attn_bias_for_masking"]
  config = load_transformer_config(str(root / "A_pn6" / "config.json"),
                                vocab_size=1024)
  return config, official_transformer.import_state_dict(config, state)


def arrays(golden_dir, name, file):
  return dict(np.load(golden_dir / "transformer_tiny" / name / file))
