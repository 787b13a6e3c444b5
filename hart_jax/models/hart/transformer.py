"""HART's AR transformer: text prefix + multi-scale token map -> logits.

Sequence layout (hart_spec.md 2.3): T context tokens (level 0), then the
tokens of scales 1..K-1 (level k), row-major. The last context slot
predicts scale 0; the inputs of scale k predict scale k. Training uses a
block-causal mask over levels; sampling feeds one scale at a time through a
KV cache (`step`).
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hart_jax.models.diffusion_head import DiffusionHead
from hart_jax.models.hart import layer_stack
from hart_jax.models.hart import rope
from hart_jax.models.hart.config import HartConfig
from hart_jax.models.hart.layers import (Block, HeadNorm, TimestepEmbedder,
                                         dense, make_norm)


# Named remat policies (config field `remat`): what a block keeps from its
# forward pass; everything else is recomputed in the backward pass.
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def level_ids(config: HartConfig) -> np.ndarray:
  """Level of every position of the training sequence, [S] (lvl_1L)."""
  pieces = [np.zeros(config.context_token, np.int32)]
  pieces += [np.full(pn * pn, k + 1, np.int32)
             for k, pn in enumerate(config.patch_nums[1:])]
  return np.concatenate(pieces)


def scale_offsets(config: HartConfig) -> list[int]:
  """Start of each step's tokens in the sequence (step 0 = the context)."""
  starts, cur = [0], config.context_token
  for pn in config.patch_nums[1:]:
    starts.append(cur)
    cur += pn * pn
  return starts


def empty_caches(config: HartConfig, batch: int):
  """Zero KV caches for `batch` rows: a (k, v) pair per block, or one pair
  with a leading layer axis when the blocks are scanned."""
  shape = (batch, config.num_heads, config.seq_len, config.head_dim)
  dtype = jnp.dtype(config.dtype)
  if config.scan_layers:
    shape = (config.depth,) + shape
    return (jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
  return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
          for _ in range(config.depth)]


class HartTransformer(nn.Module):
  """HARTForT2I without its tokenizer (which is held separately)."""
  config: HartConfig

  def setup(self):
    c = self.config
    self.dtype = jnp.dtype(c.dtype)
    self.word_embed = dense(c.embed_dim, ("latent", "embed"), "word_embed",
                            self.dtype)
    if c.num_classes:
      self.class_emb = self.param(
          "class_emb", nn.with_logical_partitioning(
              nn.initializers.truncated_normal(0.02), ("classes", "embed")),
          (c.num_classes + 1, c.embed_dim))
    else:
      self.context_embed = dense(c.embed_dim, ("context", "embed"),
                                 "context_embed", jnp.float32)
      if c.use_context_norm:
        self.context_norm = make_norm(c, "context_norm", affine=True,
                                      axis="context")
    if c.use_timestep_embed:
      self.lvl_embed = TimestepEmbedder(c.embed_dim, dtype=jnp.float32)
    else:
      self.lvl_table = self.param(
          "lvl_embed", nn.with_logical_partitioning(
              nn.initializers.truncated_normal(0.02), ("levels", "embed")),
          (c.num_scales, c.embed_dim))
    if c.attn_type == "gpt2":
      init = nn.with_logical_partitioning(
          nn.initializers.truncated_normal(0.02), (None, "seq", "embed"))
      self.pos_start = self.param("pos_start", init,
                                  (1, c.context_token, c.embed_dim))
      self.pos_1LC = self.param("pos_1LC", init, (1, c.seq_len, c.embed_dim))
    block_cls = Block
    if c.remat != "none":
      # Rematerialise each block in the backward pass; the policy decides
      # what is kept. Static args: cache_start (8) and deterministic (9),
      # counting self as 0.
      block_cls = nn.remat(Block, policy=REMAT_POLICIES[c.remat],
                           static_argnums=(8, 9))
    if c.scan_layers:
      # Scanned: the KV caches and per-layer drop-path rates are walked
      # through with the params; everything else is the same every layer.
      # Each layer gets its own init and dropout keys.
      block_cls = nn.scan(
          block_cls, variable_axes={"params": 0},
          split_rngs={"params": True, "dropout": True},
          in_axes=(nn.broadcast,) * 5 + (0, nn.broadcast, nn.broadcast, 0),
          length=c.depth,
          metadata_params={nn.PARTITION_NAME: layer_stack.LAYER_AXIS})
      self.blocks = block_cls(c, 0.0, self.dtype, name=layer_stack.SCANNED)
    else:
      self.blocks = [block_cls(c, float(rate), self.dtype,
                               name=f"blocks_{i}")
                     for i, rate in enumerate(self.drop_path_rates())]
    self.head_nm = HeadNorm(c)
    self.head = dense(c.vocab_size, ("embed", "vocab"), "head", jnp.float32)
    self.decoder_norm = make_norm(c, "decoder_norm", affine=True)
    self.diffloss = DiffusionHead(c.diffusion_head_config())

  # --- embeddings ------------------------------------------------------------

  def condition(self, context: jax.Array) -> jax.Array:
    """Context features [B, T, context_dim] (or labels [B]) -> [B, T, C]."""
    c = self.config
    if c.num_classes:
      return jnp.take(self.class_emb, context, axis=0)[:, None]
    x = context.astype(jnp.float32)
    if c.use_context_norm:
      x = self.context_norm(x)
    return self.context_embed(x)

  def level_embedding(self, levels: np.ndarray) -> jax.Array:
    """[S] level ids -> [S, C]."""
    if self.config.use_timestep_embed:
      return self.lvl_embed(jnp.asarray(levels, jnp.float32))
    return jnp.take(self.lvl_table, jnp.asarray(levels), axis=0)

  def prefix_tokens(self, cond_tokens: jax.Array) -> jax.Array:
    """The context prefix: sos (= the condition tokens) + level 0."""
    c = self.config
    x = cond_tokens + self.level_embedding(np.zeros(c.context_token,
                                                    np.int32))[None]
    if c.attn_type == "gpt2":
      x = x + self.pos_start + self.pos_1LC[:, :c.context_token]
    return x

  def scale_tokens(self, maps: jax.Array, si: int) -> jax.Array:
    """Sampler input of step si >= 1 from latent maps [B, pn*pn, Cvae]."""
    c = self.config
    start, n = scale_offsets(c)[si], c.patch_nums[si] ** 2
    lvl = self.level_embedding(np.full(n, si, np.int32))[None]
    if c.attn_type == "gpt2":
      lvl = lvl + self.pos_1LC[:, start:start + n]
    return self.word_embed(maps.astype(jnp.float32)) + lvl

  # --- rotary tables ---------------------------------------------------------

  def context_tables(self, position_ids: jax.Array):
    return rope.tables_1d(position_ids, self.config.head_dim)

  def image_tables(self, position_ids: jax.Array, si: Optional[int] = None,
                   keep: Optional[jax.Array] = None):
    """Tables for scales 1..K-1 (or only step si), offset by the context."""
    c = self.config
    pos = rope.image_positions(c.patch_nums, position_ids[:, -1])
    if si is not None:
      start = scale_offsets(c)[si] - c.context_token
      pos = pos[:, start:start + c.patch_nums[si] ** 2]
    if keep is not None:
      pos = jnp.take_along_axis(pos, keep[..., None], axis=1)
    return rope.tables_2d(pos, c.head_dim)

  # --- backbone --------------------------------------------------------------

  def drop_path_rates(self) -> np.ndarray:
    return np.linspace(0, self.config.drop_path_rate, self.config.depth)

  def backbone(self, x, cond_tokens, context_mask, cos, sin, levels=None,
               caches=None, cache_start=0, deterministic=True):
    """caches: `empty_caches(...)` of the same layout, or None."""
    x = x.astype(self.dtype)
    if self.config.scan_layers:
      rates = None
      if self.config.drop_path_rate > 0 and not deterministic:
        rates = jnp.asarray(self.drop_path_rates(), jnp.float32)
      return self.blocks(x, cond_tokens, context_mask, cos, sin, levels,
                         caches, cache_start, deterministic, rates)
    new_caches = []
    for i, block in enumerate(self.blocks):
      x, cache = block(x, cond_tokens, context_mask, cos, sin, levels,
                       None if caches is None else caches[i], cache_start,
                       deterministic)
      new_caches.append(cache)
    return x, (new_caches if caches is not None else None)

  def logits(self, hidden: jax.Array, cond_tokens: jax.Array) -> jax.Array:
    """hidden [B, l, C] -> fp32 logits [B, l, V] (head runs in fp32)."""
    return self.head(self.head_nm(hidden.astype(jnp.float32), cond_tokens))

  def diffusion_condition(self, hidden: jax.Array,
                          codewords: jax.Array) -> jax.Array:
    """decoder_norm(h_last + word_embed(codebook[idx])): the head's input."""
    return self.decoder_norm(hidden.astype(jnp.float32)
                             + self.word_embed(codewords))

  def __call__(self, context, context_mask, context_position_ids, var_input,
               keep: Optional[jax.Array] = None, deterministic: bool = True):
    """Teacher-forced forward.

    Args:
      context: [B, T, context_dim] text features (labels [B] if
        class-conditional).
      context_mask: [B, T] bool (pads are attended to; the mask only feeds
        `avg` pooling).
      context_position_ids: [B, T] (cumsum(mask) - 1).
      var_input: [B, L - 1, Cvae] teacher-forcing maps of scales 1..K-1.
      keep: optional [B, n_kept] ascending positions of the last scale's
        tokens to keep (the rest are removed from the sequence).
      deterministic: no dropout / drop-path when True.

    Returns:
      dict(logits=[B, 1 + L' - 1, V] from the last context slot on,
      hidden=[B, S', C] last-block output, cond_tokens=[B, T, C]).
    """
    c = self.config
    cond_tokens = self.condition(context)
    last = c.patch_nums[-1] ** 2
    img = self.word_embed(var_input.astype(jnp.float32))
    levels = level_ids(c)
    lvl = self.level_embedding(levels[c.context_token:])[None]
    if c.attn_type == "gpt2":
      lvl = lvl + self.pos_1LC[:, c.context_token:]
    img = img + lvl
    keep_img = None
    if keep is not None:
      head_len = img.shape[1] - last
      keep_img = jnp.concatenate([
          jnp.broadcast_to(jnp.arange(head_len), (keep.shape[0], head_len)),
          keep + head_len], axis=1)
      img = jnp.take_along_axis(img, keep_img[..., None], axis=1)
      levels = levels[:c.context_token + keep_img.shape[1]]
    x = jnp.concatenate([self.prefix_tokens(cond_tokens), img], axis=1)
    cos_c, sin_c = self.context_tables(context_position_ids)
    cos_i, sin_i = self.image_tables(context_position_ids, keep=keep_img)
    cos = jnp.concatenate([cos_c, cos_i], 1)
    sin = jnp.concatenate([sin_c, sin_i], 1)
    hidden, _ = self.backbone(x, cond_tokens, context_mask, cos, sin,
                              jnp.asarray(levels), deterministic=deterministic)
    logits = self.logits(hidden[:, c.context_token - 1:], cond_tokens)
    return dict(logits=logits, hidden=hidden, cond_tokens=cond_tokens)

  def init_all(self, context, context_mask, context_position_ids,
               var_input):
    """Touches every parameter (the diffusion head and decoder_norm are not
    on the teacher-forced path); use as `init(..., method=init_all)`."""
    out = self(context, context_mask, context_position_ids, var_input)
    hidden = out["hidden"][:, -1]
    z = self.diffusion_condition(hidden, var_input[:, -1])
    x = jnp.zeros((z.shape[0], self.config.latent_channels), jnp.float32)
    return out["logits"], self.diffloss(x, jnp.zeros((z.shape[0],),
                                                     jnp.int32), z)

  def step(self, x, cond_tokens, context_mask, cos, sin, caches,
           cache_start: int):
    """One sampling step through the KV cache -> (hidden, logits, caches)."""
    hidden, caches = self.backbone(x, cond_tokens, context_mask, cos, sin,
                                   caches=caches, cache_start=cache_start)
    return hidden, self.logits(hidden, cond_tokens), caches
