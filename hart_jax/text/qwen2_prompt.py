"""HART's prompt path to Qwen2 features (`text_encoder.kind = "qwen2"`).

What the official `encode_prompts` (mit-han-lab/hart, hart/utils/tools.py;
hart_spec.md 2.2) does, in two halves so the model runs inside the jitted
step:

  host: each prompt is tokenized alone with the folder's tokenizer.json
    (special tokens as that file's post-processor adds them: none for
    Qwen2), truncated to max_length (= context_token, 300 at release) and
    padded to it with the pad token; the prompt mask is token != pad id, so
    a literal pad token inside a prompt is masked too. With the system
    prompt (default), its tokens (tokenized alone, also truncated to
    max_length, never padded) are prepended with mask 1.
  device: Qwen2 runs on the concatenation with positions 0..n-1 and the
    padding mask; only the last max_length positions (the prompt's) of the
    final-norm hidden state are kept, as float32. Padded positions keep
    their ordinary hidden states: HART reads them as context tokens.
    Position ids are cumsum(prompt mask) - 1.

The padding and truncation sides come from the folder's
tokenizer_config.json (right when absent, transformers' default), the pad
token from it or special_tokens_map.json (Qwen2Tokenizer's "<|endoftext|>"
when neither names one), which is what `AutoTokenizer` reads. The official
code truncates silently; here each truncated prompt logs a warning.
Only `tokenizers` is needed at run time, not transformers.
"""

import json
import logging
import pathlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tokenizers

from hart_jax.errors import CheckpointError, ConfigError, InputError
from hart_jax.text import qwen2
from hart_jax.text.encoders import TextEncoder, position_ids

# The official `llm_system_prompt` of mit-han-lab/hart
# hart/utils/constants.py (commit e28a41f), character for character: it is
# part of Qwen2's input, so any change alters the features HART was trained
# on. The source's trailing "\n" escape is a real newline.
SYSTEM_PROMPT = (
    'Given a user prompt, generate an "Enhanced prompt" that provides '
    "detailed visual descriptions suitable for image generation.\n\n"
    "Examples:\n"
    "- User Prompt: A cat sleeping -> A small, fluffy white cat curled up "
    "in a round shape, sleeping peacefully on a warm sunny windowsill, "
    "surrounded by pots of blooming red flowers.\n"
    "- User Prompt: A busy city street -> A bustling city street scene at "
    "dusk, featuring glowing street lamps, a diverse crowd of people in "
    "colorful clothing, and a double-decker bus passing by towering glass "
    "skyscrapers.\n\n"
    "Please generate only the enhanced description for the prompt below "
    "and DO NOT include any additional sentences. Start your response with "
    '"Enhanced Prompt:".\n\n'
    "User Prompt:\n")

# Qwen2Tokenizer's own default when the folder names no pad token.
_QWEN2_PAD = "<|endoftext|>"
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _optional_json(path: pathlib.Path) -> dict:
  if not path.exists():
    return {}
  try:
    raw = json.loads(path.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise InputError(f"{path}: not valid JSON ({e})") from e
  if not isinstance(raw, dict):
    raise InputError(f"{path}: expected a JSON object")
  return raw


def _token_text(value):
  """A special token as tokenizer_config.json writes it: str or
  {"content": str, ...}."""
  return value.get("content") if isinstance(value, dict) else value


class PromptTokenizer:
  """Prompts -> ids and mask [B, S + max_length] of the system prompt (S
  tokens, S = 0 without it) followed by the padded prompt."""

  def __init__(self, folder, max_length: int, use_system_prompt: bool = True):
    folder = pathlib.Path(folder)
    path = folder / "tokenizer.json"
    if not path.exists():
      raise InputError(f"{folder}: no tokenizer.json (the fast-tokenizer "
                       "file of the Qwen2 folder)")
    try:
      tok = tokenizers.Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception
      raise InputError(f"{path}: not a readable tokenizer ({e})") from e
    config = _optional_json(folder / "tokenizer_config.json")
    special = _optional_json(folder / "special_tokens_map.json")
    pad_token = (_token_text(config.get("pad_token"))
                 or _token_text(special.get("pad_token")) or _QWEN2_PAD)
    sides = {}
    for name in ("padding_side", "truncation_side"):
      sides[name] = config.get(name, "right")
      if sides[name] not in ("left", "right"):
        raise InputError(f"{folder / 'tokenizer_config.json'}: {name} "
                         f"{sides[name]!r} is not 'left' or 'right'")
    self.pad_id = tok.token_to_id(pad_token)
    if self.pad_id is None:
      raise InputError(f"{path}: the pad token {pad_token!r} is not in the "
                       "vocabulary")
    self.max_length = max_length
    self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
    tok.no_padding()
    tok.no_truncation()
    # An untruncated twin, only to count what truncation drops.
    self._full = tokenizers.Tokenizer.from_str(tok.to_str())
    tok.enable_truncation(max_length, direction=sides["truncation_side"])
    self.system_ids = np.zeros((0,), np.int32)
    if use_system_prompt:
      self.system_ids = np.asarray(tok.encode(SYSTEM_PROMPT).ids, np.int32)
      self._warn_if_truncated("the system prompt", SYSTEM_PROMPT,
                              len(self.system_ids))
    tok.enable_padding(direction=sides["padding_side"], pad_id=self.pad_id,
                       pad_token=pad_token, length=max_length)
    self._tok = tok

  def _warn_if_truncated(self, what: str, text: str, kept: int):
    total = len(self._full.encode(text).ids)
    if total > kept:
      logging.warning("%s has %d tokens > max_length %d: dropped %d tokens "
                      "(%.60r...)", what, total, self.max_length,
                      total - kept, text)

  def __call__(self, prompts: Sequence[str]) -> tuple[np.ndarray,
                                                      np.ndarray]:
    """(ids int32, mask bool), both [B, S + max_length]."""
    prompts = [str(p) for p in prompts]
    encodings = self._tok.encode_batch(prompts)
    for i, e in enumerate(encodings):
      if e.overflowing:
        self._warn_if_truncated(f"prompt {i}", prompts[i],
                                int(np.sum(e.attention_mask)))
    ids = np.asarray([e.ids for e in encodings], np.int32).reshape(
        len(prompts), self.max_length)
    mask = ids != self.pad_id
    system = np.broadcast_to(self.system_ids,
                             (len(prompts), len(self.system_ids)))
    return (np.concatenate([system, ids], 1),
            np.concatenate([np.ones(system.shape, bool), mask], 1))


class Qwen2TextEncoder(TextEncoder):
  """HART's Qwen2 text encoder read from a local Hugging Face folder.

  Options (config `text_encoder.qwen2`): `path` to the folder (config.json,
  model.safetensors or its index, tokenizer.json); `dtype` "float32" or
  "bfloat16" compute; `use_system_prompt` (default True, as released);
  `max_length`, if given, must equal the model's context_token (prompts
  are always padded to context_token).
  """

  def __init__(self, context_dim: int, context_token: int, path: str = "",
               dtype: str = "float32", use_system_prompt: bool = True,
               max_length: int | None = None):
    super().__init__(context_dim, context_token)
    if max_length is not None and max_length != context_token:
      raise ConfigError(f"text_encoder.qwen2.max_length {max_length} != the "
                        f"model's context_token {context_token}")
    if not path:
      raise ConfigError("text_encoder.qwen2.path is empty: point it at a "
                        "local Hugging Face Qwen2 folder")
    if dtype not in _DTYPES:
      raise ConfigError(f"text_encoder.qwen2.dtype must be one of "
                        f"{sorted(_DTYPES)}, got {dtype!r}")
    self.folder = pathlib.Path(path)
    self.config = qwen2.Qwen2Config.from_json(self.folder / "config.json")
    if self.config.hidden_size != context_dim:
      raise ConfigError(f"{self.folder}: Qwen2 hidden_size "
                        f"{self.config.hidden_size} != the model's "
                        f"context_dim {context_dim}")
    self.tokenizer = PromptTokenizer(self.folder, context_token,
                                     use_system_prompt)
    if self.tokenizer.vocab_size > self.config.vocab_size:
      raise CheckpointError(f"{self.folder}: tokenizer.json has "
                            f"{self.tokenizer.vocab_size} tokens, more than "
                            f"config.json's vocab_size "
                            f"{self.config.vocab_size}")
    self.module = qwen2.Qwen2Model(self.config, _DTYPES[dtype])

  def init_params(self, rng: jax.Array):
    """The folder's weights, read now (as stored: host numpy arrays)."""
    del rng
    return qwen2.params_from_state(self.config,
                                   qwen2.read_weights(self.folder),
                                   str(self.folder))

  def abstract_params(self):
    """Logically partitioned shapes of `init_params`, for sharding."""
    return qwen2.abstract_params(self.config)

  def host_inputs(self, captions: Sequence[str]) -> dict[str, np.ndarray]:
    ids, mask = self.tokenizer(captions)
    return {"text_ids": ids, "text_mask": mask}

  def encode(self, params, inputs):
    mask = inputs["text_mask"]
    hidden = self.module.apply({"params": params}, inputs["text_ids"], mask)
    # The system prompt only conditions the prompt's states; it is dropped.
    prompt_mask = mask[:, -self.max_length:]
    return (hidden[:, -self.max_length:].astype(jnp.float32), prompt_mask,
            position_ids(prompt_mask))
