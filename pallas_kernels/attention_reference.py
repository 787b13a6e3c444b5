"""Pure-jnp references for HART's attention ops: the spec for the kernels.

Both ops take q, k, v of shape [B, H, S, D] and a softmax scale (HART uses
0.25 / sqrt(D)). The references materialise the boolean mask and compute the
softmax in float32; the output has q's dtype.

A query that sees no key at all gets an all-zero output (and zero
gradients), not the NaN of a plain softmax over only -inf: the kernels
produce the same, and it keeps padded or empty rows harmless.
"""

import jax
from jax import lax
import jax.numpy as jnp


def dot_precision(dtype) -> lax.Precision:
  """Matmul precision used by the references and the kernels for `dtype`.

  float32 inputs get HIGHEST: the default is one bf16 pass on TPU and TF32 on
  NVIDIA GPUs, while torch (allow_tf32=False) computes in true float32. For
  bf16 inputs the products are exact in float32 anyway, so DEFAULT.
  """
  if jnp.dtype(dtype) == jnp.float32:
    return lax.Precision.HIGHEST
  return lax.Precision.DEFAULT


def block_causal_mask(q_levels: jax.Array, kv_levels: jax.Array) -> jax.Array:
  """[S_q, S_k] bool: query i may attend key j iff kv_levels[j] <= q_levels[i].

  With HART's per-token scale ids this is block-causal over scales and
  bidirectional inside a scale (the text prefix is level 0).
  """
  return kv_levels[None, :] <= q_levels[:, None]


def masked_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                     mask: jax.Array, scale: float) -> jax.Array:
  """softmax(scale * q k^T, masked) v in float32, cast to q's dtype.

  Args:
    q: [B, H, S_q, D]; k, v: [B, H, S_k, D].
    mask: bool, broadcastable to [B, H, S_q, S_k]; True = may attend.
    scale: softmax scale applied to the logits.

  Returns:
    [B, H, S_q, D] in q's dtype; rows with no visible key are zero.
  """
  precision = dot_precision(q.dtype)
  logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, precision=precision,
                      preferred_element_type=jnp.float32) * scale
  row_max = jnp.max(jnp.where(mask, logits, -jnp.inf), axis=-1, keepdims=True)
  # The shift only guards exp against overflow; softmax does not depend on
  # it, so it carries no gradient. Fully masked rows (max = -inf) use 0.
  shift = lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
  # exp only of unmasked logits: a masked one never becomes inf or NaN.
  e = jnp.where(mask, jnp.exp(logits - shift), 0.0)
  denom = jnp.sum(e, axis=-1, keepdims=True)
  weights = e / jnp.where(denom == 0.0, 1.0, denom)
  out = jnp.einsum("bhqk,bhkd->bhqd", weights, v.astype(jnp.float32),
                   precision=lax.Precision.HIGHEST)
  return out.astype(q.dtype)


def block_causal_attention_reference(q, k, v, q_levels, kv_levels, *, scale):
  """HART's training attention: block-causal over scales.

  Args:
    q: [B, H, S_q, D]; k, v: [B, H, S_k, D].
    q_levels: int [S_q] level id of each query token.
    kv_levels: int [S_k] level id of each key token.
    scale: softmax scale.

  Returns:
    [B, H, S_q, D] in q's dtype.
  """
  return masked_attention(q, k, v, block_causal_mask(q_levels, kv_levels),
                          scale)


def cached_attention_reference(q, k_cache, v_cache, kv_length, *, scale):
  """HART's sampling attention: one scale's queries against a KV cache.

  Args:
    q: [B, H, L_q, D].
    k_cache, v_cache: [B, H, S_max, D]; only the first kv_length positions
      hold keys, the rest is ignored whatever it contains.
    kv_length: int scalar (may be traced), the number of valid positions.
    scale: softmax scale.

  Returns:
    [B, H, L_q, D] in q's dtype.
  """
  valid = jnp.arange(k_cache.shape[2]) < kv_length
  # Zero the invalid tail of V: its softmax weight is 0, but 0 * inf or
  # 0 * NaN garbage would still poison the weighted sum.
  v_cache = jnp.where(valid[:, None], v_cache, jnp.zeros((), v_cache.dtype))
  return masked_attention(q, k_cache, v_cache, valid[None, :], scale)
