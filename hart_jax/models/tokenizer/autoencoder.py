"""The tokenizer's convolutional encoder and decoder (NHWC, flax.linen).

Taming/LDM-style networks as HART uses them (hart_spec.md section 3):
GroupNorm(32, eps 1e-6) -> SiLU -> conv residual blocks, single-head
self-attention at the lowest resolution and in the middle, stride-2
downsampling after padding right/bottom only, nearest x2 upsampling.
Submodule names follow the official state-dict keys (`down_0_block_1` is
`down.0.block.1`) so the interop table stays mechanical.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hart_jax.models.tokenizer.config import TokenizerConfig
from hart_jax.ops.resample import nearest_upsample_2x

Dtype = Any


def group_norm(config: TokenizerConfig, name: str) -> nn.GroupNorm:
  # Two-pass variance and fp32 statistics: torch's GroupNorm does both, and
  # E[x^2]-E[x]^2 loses digits on large activations.
  return nn.GroupNorm(num_groups=config.norm_groups, epsilon=config.norm_eps,
                      use_fast_variance=False, dtype=jnp.float32, name=name)


def conv(features: int, kernel: int, dtype: Dtype, name: str,
         stride: int = 1, padding: Any = "SAME_TORCH") -> nn.Conv:
  if padding == "SAME_TORCH":
    padding = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=padding, dtype=dtype, name=name)


class ResnetBlock(nn.Module):
  """GN -> SiLU -> conv3x3 -> GN -> SiLU -> dropout -> conv3x3, + shortcut."""
  config: TokenizerConfig
  out_channels: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    c = self.config
    h = nn.silu(group_norm(c, "norm1")(x)).astype(self.dtype)
    h = conv(self.out_channels, 3, self.dtype, "conv1")(h)
    h = nn.silu(group_norm(c, "norm2")(h)).astype(self.dtype)
    h = nn.Dropout(c.dropout, deterministic=not train or c.dropout <= 1e-6)(h)
    h = conv(self.out_channels, 3, self.dtype, "conv2")(h)
    if x.shape[-1] != self.out_channels:
      x = conv(self.out_channels, 1, self.dtype, "nin_shortcut")(x)
    return x + h


class AttnBlock(nn.Module):
  """Single-head self-attention over all H*W positions, scale C**-0.5."""
  config: TokenizerConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, hgt, wid, ch = x.shape
    qkv = conv(3 * ch, 1, self.dtype, "qkv")(
        group_norm(self.config, "norm")(x).astype(self.dtype))
    # The official 1x1 conv emits [q | k | v] along channels.
    q, k, v = jnp.split(qkv.reshape(b, hgt * wid, 3 * ch), 3, axis=-1)
    logits = jnp.einsum("bqc,bkc->bqk", q, k).astype(jnp.float32)
    weights = jax.nn.softmax(logits * ch ** -0.5, axis=-1).astype(self.dtype)
    out = jnp.einsum("bqk,bkc->bqc", weights, v).reshape(b, hgt, wid, ch)
    return x + conv(ch, 1, self.dtype, "proj_out")(out)


class Encoder(nn.Module):
  """Image [B, H, W, 3] in [-1, 1] -> latent [B, H/f, W/f, z_channels]."""
  config: TokenizerConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    c = self.config
    levels = len(c.ch_mult)
    h = conv(c.ch, 3, self.dtype, "conv_in")(x.astype(self.dtype))
    for lvl, mult in enumerate(c.ch_mult):
      for blk in range(c.num_res_blocks):
        h = ResnetBlock(c, c.ch * mult, self.dtype,
                        name=f"down_{lvl}_block_{blk}")(h, train)
        if lvl == levels - 1 and c.using_sa:
          h = AttnBlock(c, self.dtype, name=f"down_{lvl}_attn_{blk}")(h)
      if lvl != levels - 1:
        # Pad only right/bottom, then a VALID stride-2 conv (official
        # Downsample2x); symmetric padding would shift the grid.
        h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2),
                    padding=((0, 1), (0, 1)), dtype=self.dtype,
                    name=f"down_{lvl}_downsample")(h)
    h = _middle(c, self.dtype, h, train)
    h = nn.silu(group_norm(c, "norm_out")(h)).astype(self.dtype)
    return conv(c.z_channels, 3, self.dtype, "conv_out")(h)


class Decoder(nn.Module):
  """Latent [B, h, w, z_channels] -> image [B, h*f, w*f, 3] (unclamped)."""
  config: TokenizerConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
    c = self.config
    levels = len(c.ch_mult)
    h = conv(c.ch * c.ch_mult[-1], 3, self.dtype, "conv_in")(
        z.astype(self.dtype))
    h = _middle(c, self.dtype, h, train)
    for lvl in reversed(range(levels)):
      for blk in range(c.num_res_blocks + 1):
        h = ResnetBlock(c, c.ch * c.ch_mult[lvl], self.dtype,
                        name=f"up_{lvl}_block_{blk}")(h, train)
        if lvl == levels - 1 and c.using_sa:
          h = AttnBlock(c, self.dtype, name=f"up_{lvl}_attn_{blk}")(h)
      if lvl != 0:
        h = conv(h.shape[-1], 3, self.dtype, f"up_{lvl}_upsample")(
            nearest_upsample_2x(h))
    h = nn.silu(group_norm(c, "norm_out")(h)).astype(self.dtype)
    return conv(c.in_channels, 3, self.dtype, "conv_out")(h).astype(
        jnp.float32)


def _middle(c: TokenizerConfig, dtype: Dtype, h: jax.Array,
            train: bool) -> jax.Array:
  """Res -> Attn -> Res at the lowest resolution (shared by both nets)."""
  width = h.shape[-1]
  h = ResnetBlock(c, width, dtype, name="mid_block_1")(h, train)
  if c.using_mid_sa:
    h = AttnBlock(c, dtype, name="mid_attn_1")(h)
  return ResnetBlock(c, width, dtype, name="mid_block_2")(h, train)
