"""Building blocks of the HART transformer (hart_spec.md 2.3-2.4).

Names follow the official state-dict keys so interop is mechanical: a block
is `blocks_{i}` with `attn` (`qkv_proj`, `q_bias`, `v_bias`, `proj`), `ffn`
(`gate_proj`/`up_proj`/`down_proj`, or `fc1`/`fc2`), `ln_wo_grad` and
`ada_lin_1`. Every parameter carries logical axis names; the one table that
maps them onto a mesh lives in hart_jax.sharding.
"""

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from hart_jax.models.hart import rope
from hart_jax.models.hart.config import HartConfig

Cache = tuple[jax.Array, jax.Array]


def dense(features: int, axes: tuple[str, str], name: str, dtype: Any,
          use_bias: bool = True) -> nn.Dense:
  return nn.Dense(
      features, use_bias=use_bias, dtype=dtype, name=name,
      kernel_init=nn.with_logical_partitioning(
          nn.initializers.truncated_normal(0.02), axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                             (axes[1],)))


def vector_param(module: nn.Module, name: str, size: int, axis: str,
                 init=nn.initializers.zeros):
  return module.param(name, nn.with_logical_partitioning(init, (axis,)),
                      (size,))


class RMSNorm(nn.Module):
  """The official fused RMSNorm: fp32 statistics, weight applied after.

  The normalised value is cast back to the input dtype before the weight
  multiplies it (the fused kernel's order), and unlike the released kernel
  it is differentiable.
  """
  eps: float
  axis: str = "norm"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    w = vector_param(self, "scale", x.shape[-1], self.axis,
                     nn.initializers.ones)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True)
                                 + self.eps)
    return normed.astype(x.dtype) * w.astype(x.dtype)


def make_norm(config: HartConfig, name: str, affine: bool = False,
              axis: str = "norm"):
  """llama: RMSNorm with a weight (despite `ln_wo_grad`); gpt2: LayerNorm."""
  if config.attn_type == "llama":
    return RMSNorm(config.norm_eps, axis, name=name)
  return nn.LayerNorm(epsilon=config.norm_eps, use_scale=affine,
                      use_bias=affine, dtype=jnp.float32, name=name)


class TimestepEmbedder(nn.Module):
  """Sinusoid of a (fractional) scalar -> MLP; HART embeds level ids so."""
  width: int
  frequency_size: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    half = self.frequency_size // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32)
                    / half)
    args = t.astype(jnp.float32)[..., None] * freqs
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], -1)
    h = dense(self.width, ("freq", "embed"), "mlp_0", self.dtype)(emb)
    return dense(self.width, ("embed", "embed_out"), "mlp_2", self.dtype)(
        nn.silu(h))


def pool_condition(tokens: jax.Array, mask: Optional[jax.Array],
                   mode: str) -> jax.Array:
  """[B, T, D] -> [B, D]: max over tokens (mask ignored) or masked mean."""
  if mode == "max":
    return tokens.max(1)
  m = mask.astype(tokens.dtype)[..., None]
  return (tokens * m / jnp.maximum(m.sum(1, keepdims=True), 1)).sum(1)


class Attention(nn.Module):
  """Multi-head self-attention with HART's q/v biases and 1/32 scale.

  Training passes per-token levels (block-causal mask: a query sees keys of
  its own or earlier levels); sampling passes a KV cache and the slot where
  this step's keys go (all cached keys are visible).
  """
  config: HartConfig
  dtype: Any

  @nn.compact
  def __call__(self, x, cos, sin, levels=None, cache: Optional[Cache] = None,
               cache_start: int = 0, deterministic: bool = True):
    c = self.config
    b, length, width = x.shape
    heads, hd = c.num_heads, c.head_dim
    qkv_name = "qkv_proj" if c.attn_type == "llama" else "mat_qkv"
    qkv = dense(3 * width, ("embed", "qkv"), qkv_name, self.dtype,
                use_bias=False)(x)
    # The k bias is a zero buffer in the official model (not a parameter).
    bias = jnp.concatenate([
        vector_param(self, "q_bias", width, "qkv"),
        jnp.zeros((width,), jnp.float32),
        vector_param(self, "v_bias", width, "qkv")])
    qkv = (qkv + bias.astype(qkv.dtype)).reshape(b, length, 3, heads, hd)
    q, k, v = (jnp.transpose(qkv[:, :, i], (0, 2, 1, 3)) for i in range(3))
    if c.attn_l2_norm:
      scale_mul = self.param(
          "scale_mul_1H11", nn.with_logical_partitioning(
              nn.initializers.constant(math.log(4.0)),
              (None, "heads", None, None)), (1, heads, 1, 1))
      scale_mul = jnp.exp(jnp.minimum(scale_mul, math.log(100.0)))
      q = _l2_normalize(q) * scale_mul.astype(q.dtype)
      k = _l2_normalize(k)
      scale = 1.0
    else:
      scale = 0.25 / math.sqrt(hd)   # VAR's quirk: 1/32 at hd 64
    if c.attn_type == "llama":
      q, k = rope.rotate(q, cos, sin), rope.rotate(k, cos, sin)
    if cache is not None:
      k_cache, v_cache = cache
      k_cache = jax.lax.dynamic_update_slice_in_dim(
          k_cache, k.astype(k_cache.dtype), cache_start, axis=2)
      v_cache = jax.lax.dynamic_update_slice_in_dim(
          v_cache, v.astype(v_cache.dtype), cache_start, axis=2)
      cache = (k_cache, v_cache)
      end = cache_start + length
      if c.attention_implementation != "xla":
        import pallas_kernels  # pylint: disable=g-import-not-at-top
        out = pallas_kernels.cached_attention(
            q, k_cache, v_cache, jnp.int32(end), scale=scale,
            implementation=c.attention_implementation)
      else:
        out = attention(q, k_cache[:, :, :end], v_cache[:, :, :end], scale,
                        None, "xla")
    else:
      out = attention(q, k, v, scale, levels, c.attention_implementation)
    out = nn.Dropout(c.drop_rate)(
        dense(width, ("qkv", "embed"), "proj", self.dtype)(
            jnp.transpose(out, (0, 2, 1, 3)).reshape(b, length, width)),
        deterministic=deterministic)
    return out, cache


def _l2_normalize(x: jax.Array) -> jax.Array:
  norm = jnp.sqrt(jnp.sum(x.astype(jnp.float32) ** 2, -1, keepdims=True))
  return (x / jnp.maximum(norm, 1e-12)).astype(x.dtype)


def attention(q, k, v, scale: float, levels, implementation: str):
  """softmax(q k^T * scale + mask) v in fp32 statistics; [B, H, S, hd]."""
  if implementation != "xla" and levels is not None:
    import pallas_kernels  # pylint: disable=g-import-not-at-top
    return pallas_kernels.block_causal_attention(
        q, k, v, levels, levels, scale=scale, implementation=implementation)
  b, h, lq, _ = q.shape
  chunk = _query_chunk(b * h * k.shape[2], lq)
  if levels is None and chunk < lq:
    # Sampling's last scale at 1024px would otherwise materialise a
    # [2B, H, 4096, 9750] f32 score matrix (57 GiB at B = 8): go through
    # the queries in slices that keep it near 1 GiB.
    return jnp.concatenate([attention(q[:, :, i:i + chunk], k, v, scale,
                                      None, implementation)
                            for i in range(0, lq, chunk)], axis=2)
  logits = jnp.einsum("bhqd,bhkd->bhqk", q, k,
                      preferred_element_type=jnp.float32) * scale
  if levels is not None:
    visible = levels[None, :] <= levels[:, None]
    logits = jnp.where(visible, logits, -jnp.inf)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bhkd->bhqd", weights, v)


def _query_chunk(rows_times_keys: int, lq: int,
                 budget_bytes: int = 2 ** 30) -> int:
  """Largest power-of-two query slice whose f32 scores fit the budget."""
  chunk = lq
  while chunk > 16 and chunk * rows_times_keys * 4 > budget_bytes:
    chunk //= 2
  return chunk


class MLP(nn.Module):
  """llama: down(silu(gate x) * up x); gpt2: fc2(gelu_tanh(fc1 x))."""
  config: HartConfig
  dtype: Any

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    c = self.config
    hidden = c.mlp_hidden
    if c.mlp_type == "llama":
      gate = dense(hidden, ("embed", "mlp"), "gate_proj", self.dtype, False)(x)
      up = dense(hidden, ("embed", "mlp"), "up_proj", self.dtype, False)(x)
      out = dense(c.embed_dim, ("mlp", "embed"), "down_proj", self.dtype,
                  False)(nn.silu(gate) * up)
    else:
      h = nn.gelu(dense(hidden, ("embed", "mlp"), "fc1", self.dtype)(x),
                  approximate=True)
      out = dense(c.embed_dim, ("mlp", "embed"), "fc2", self.dtype)(h)
    return nn.Dropout(c.drop_rate)(out, deterministic=deterministic)


class Block(nn.Module):
  """Pre-norm attention + MLP, optionally modulated by AdaLN (three forms)."""
  config: HartConfig
  drop_path: float
  dtype: Any

  @nn.compact
  def __call__(self, x, cond_tokens, context_mask, cos, sin, levels=None,
               cache=None, cache_start=0, deterministic=True,
               drop_path=None):
    """`drop_path` (a traced per-layer rate under nn.scan) overrides the
    field of the same name."""
    c = self.config
    rate = self.drop_path if drop_path is None else drop_path
    norm = make_norm(c, "ln_wo_grad")
    if not c.disable_aln:
      pooled = pool_condition(cond_tokens, context_mask,
                              c.sep_aln_pooling_mode)
      mod = dense(6 * c.embed_dim, ("cond", "embed6"), "ada_lin_1",
                  self.dtype)(nn.silu(pooled))
      mod = mod.reshape(-1, 1, 6, c.embed_dim)
    elif c.shared_aln:
      table = self.param("scale_shift_table", nn.with_logical_partitioning(
          nn.initializers.normal(c.embed_dim ** -0.5), (None, "embed")),
                         (6, c.embed_dim))
      pooled = pool_condition(cond_tokens, context_mask, "avg")
      mod = (table[None] + pooled[:, None])[:, None]
    else:
      mod = None
    attn = Attention(c, self.dtype, name="attn")
    mlp = MLP(c, self.dtype, name="ffn")
    if mod is None:
      h, cache = attn(norm(x), cos, sin, levels, cache, cache_start,
                      deterministic)
      x = x + self._drop_path(h, deterministic, rate)
      return x + self._drop_path(mlp(norm(x), deterministic),
                                 deterministic, rate), cache
    # Official chunk order: (gamma1, gamma2, scale1, scale2, shift1, shift2).
    g1, g2, s1, s2, b1, b2 = (mod[:, :, i].astype(x.dtype) for i in range(6))
    h, cache = attn(norm(x) * (1 + s1) + b1, cos, sin, levels, cache,
                    cache_start, deterministic)
    x = x + self._drop_path(h * g1, deterministic, rate)
    h = mlp(norm(x) * (1 + s2) + b2, deterministic)
    return x + self._drop_path(h * g2, deterministic, rate), cache

  def _drop_path(self, x, deterministic, rate):
    if deterministic or (isinstance(rate, float) and rate <= 0):
      return x
    keep = 1.0 - rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep,
                                (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, 0)


class HeadNorm(nn.Module):
  """AdaLN before the head: cond max-pooled over all context tokens."""
  config: HartConfig

  @nn.compact
  def __call__(self, x, cond_tokens):
    c = self.config
    mod = dense(2 * c.embed_dim, ("cond", "embed2"), "ada_lin_1",
                jnp.float32)(nn.silu(cond_tokens.max(1)))
    scale, shift = mod[:, None, :c.embed_dim], mod[:, None, c.embed_dim:]
    return make_norm(c, "ln_wo_grad")(x) * (1 + scale) + shift
