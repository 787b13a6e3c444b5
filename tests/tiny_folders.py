"""Small official-layout folders for tests: a tokenizer/, an llm/ and a
Qwen2 text-encoder folder, random but complete (what a user downloads, at
CPU size)."""

import json
import pathlib

from flax import traverse_util
import flax.linen as nn
import jax
import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from configs import tiny
from hart_jax.interop import official_tokenizer, official_transformer
from hart_jax.interop.state_dict_io import write_safetensors
from hart_jax.models.hart.config import HartConfig
from hart_jax.models.tokenizer.config import TokenizerConfig
from hart_jax.text import qwen2
from hart_jax.text.qwen2_prompt import SYSTEM_PROMPT

QWEN2_PAD = "<|endoftext|>"


def write_tokenizer(folder, seed: int = 0) -> TokenizerConfig:
  """configs/tiny.py's tokenizer shape (32px images), random weights."""
  config = TokenizerConfig(**tiny.TOKENIZER)
  official_tokenizer.save_tokenizer(
      str(folder), config,
      official_tokenizer.init_variables(config, jax.random.key(seed)))
  return config


def write_llm(folder, tok_config: TokenizerConfig, context_dim: int = 32,
              context_token: int = 8, seed: int = 0,
              num_classes: int = 0) -> HartConfig:
  """A 2-layer text-to-image (or, with num_classes, class-conditional)
  transformer on `tok_config`'s schedule."""
  config = HartConfig(
      context_token=1 if num_classes else context_token,
      context_dim=context_dim, depth=2, embed_dim=64, num_heads=2,
      mlp_type="llama", attn_type="llama", disable_aln=True,
      use_timestep_embed=True, use_context_norm=not num_classes,
      patch_nums=tok_config.v_patch_nums, diff_width=32, diff_depth=1,
      vocab_size=tok_config.vocab_size, num_classes=num_classes,
      latent_channels=tok_config.z_channels)
  params = official_transformer.init_params(config, jax.random.key(seed))
  official_transformer.save_transformer(str(folder), config, params,
                                        write_ema_bin=False)
  return config


def write_qwen2(folder, hidden: int = 32, seed: int = 0) -> None:
  """A 1-layer Qwen2 folder: config.json, model.safetensors and a small
  byte-level BPE tokenizer.json trained on the system prompt."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(
      [SYSTEM_PROMPT, "a red fox in snow"], trainers.BpeTrainer(
          vocab_size=300, show_progress=False,
          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  tok.add_special_tokens([QWEN2_PAD])
  tok.save(str(folder / "tokenizer.json"))
  raw = dict(model_type="qwen2", vocab_size=tok.get_vocab_size(),
             hidden_size=hidden, intermediate_size=2 * hidden,
             num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=1, rms_norm_eps=1e-6, rope_theta=1e6,
             hidden_act="silu")
  (folder / "config.json").write_text(json.dumps(raw))
  config = qwen2.Qwen2Config.from_json(folder / "config.json")
  abstract = traverse_util.flatten_dict(
      nn.unbox(qwen2.abstract_params(config)))
  rng = np.random.default_rng(seed)
  params = {path: rng.normal(0, 0.5, spec.shape).astype(np.float32)
            for path, spec in abstract.items()}
  write_safetensors(str(folder / "model.safetensors"),
                    qwen2.state_from_params(
                        traverse_util.unflatten_dict(params)))
