"""Triton (GPU) Pallas kernels for HART's attention ops.

Triton has no sequential grid axis and no scratch memory, so every program
owns one output block and loops over the other sequence itself, keeping its
accumulators in registers (flash-attention style):

  forward:  one program per (query block, b, h); loops over key blocks with
            an online softmax, writes o and the row logsumexp.
  dq:       one program per (query block, b, h); loops over key blocks.
  dk, dv:   one program per (key block, b, h); loops over query blocks.
  cached:   one program per (query block, b, h); loops over the cache
            blocks that hold valid keys.

The loop bounds of the training kernels come from [lo, hi) block ranges that
attention.py computes from the level ids outside the kernel, so fully masked
blocks are never loaded. Inside a range every block is still masked
element-wise with the levels: that keeps results exact for any levels, and
for HART's non-decreasing levels the ranges hold no fully masked block.

All inputs arrive padded (sequence lengths to block multiples, the head dim
to a power of two): Triton tensors must have power-of-two shapes.
"""

import functools

import jax
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu
import jax.numpy as jnp

from pallas_kernels import attention_reference

# tl.dot needs every matmul dimension to be at least 16.
MIN_BLOCK = 16
# Running max before any key is seen: finite, so that exp(m_prev - m_next)
# and exp(-inf - m) stay NaN-free while a row has seen only masked keys.
_M_INIT = -1e30
# Measured on one H100 (jax 0.11.2), B=8, H=24, S=9750, D=64, bf16: of
# {4, 8} warps x {2, 3} stages, 4 warps won everywhere (8 was up to 2x
# slower); 3 stages was 0-4% faster than 2.
_NUM_WARPS = 4
_NUM_STAGES = 3

_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_NN = (((1,), (0,)), ((), ()))  # a @ b


def _dot(a, b, dims, precision):
  return lax.dot_general(a, b, dims, precision=precision,
                         preferred_element_type=jnp.float32)


def fit_block(requested: int, length: int) -> int:
  """Block size for a sequence of `length`: shrunk to the padded length."""
  if requested < MIN_BLOCK or requested & (requested - 1):
    raise ValueError(
        f"GPU block sizes must be powers of two >= {MIN_BLOCK}, got "
        f"{requested}")
  return min(requested, max(MIN_BLOCK, pl.next_power_of_2(length)))


def padded_head_dim(d: int) -> int:
  return max(MIN_BLOCK, pl.next_power_of_2(d))


def _online_softmax_step(s, v, carry, precision):
  """Folds one masked [bq, bk] logit block into (m, l, acc).

  Masked logits are -inf, so their exp is exactly 0; m starts at _M_INIT
  rather than -inf so that a row whose keys so far were all masked keeps
  l = 0 and acc = 0 instead of NaN.
  """
  m, l, acc = carry
  m_next = jnp.maximum(m, jnp.max(s, axis=1))
  p = jnp.exp(s - m_next[:, None])
  alpha = jnp.exp(m - m_next)
  l = alpha * l + jnp.sum(p, axis=1)
  acc = alpha[:, None] * acc + _dot(p.astype(v.dtype), v, _NN, precision)
  return m_next, l, acc


def _write_output(carry, o_ref, lse_ref):
  m, l, acc = carry
  empty = l == 0.0  # The row saw no key: output 0, lse +inf (p = 0 in bwd).
  o_ref[...] = (acc / jnp.where(empty, 1.0, l)[:, None]).astype(o_ref.dtype)
  if lse_ref is not None:
    lse_ref[...] = jnp.where(empty, jnp.inf, m + jnp.log(l))


def _init_carry(bq, d):
  return (jnp.full((bq,), _M_INIT, jnp.float32),
          jnp.zeros((bq,), jnp.float32), jnp.zeros((bq, d), jnp.float32))


# ----------------------------------------------------------------------------
# Block-causal training attention.
# ----------------------------------------------------------------------------


def _fwd_kernel(lo_ref, hi_ref, q_ref, k_ref, v_ref, q_lev_ref, kv_lev_ref,
                o_ref, lse_ref, *, scale, block_k, precision):
  i = pl.program_id(0)
  q = q_ref[...]
  q_lev = q_lev_ref[...]

  def body(j, carry):
    keys = pl.ds(pl.multiple_of(j * block_k, block_k), block_k)
    visible = kv_lev_ref[keys][None, :] <= q_lev[:, None]
    s = _dot(q, k_ref[keys, :], _NT, precision) * scale
    s = jnp.where(visible, s, -jnp.inf)
    return _online_softmax_step(s, v_ref[keys, :], carry, precision)

  carry = lax.fori_loop(lo_ref[i], hi_ref[i], body, _init_carry(*q.shape))
  _write_output(carry, o_ref, lse_ref)


def _dq_kernel(lo_ref, hi_ref, q_ref, k_ref, v_ref, do_ref, lse_ref,
               delta_ref, q_lev_ref, kv_lev_ref, dq_ref, *, scale, block_k,
               precision):
  i = pl.program_id(0)
  q, do = q_ref[...], do_ref[...]
  lse, delta, q_lev = lse_ref[...], delta_ref[...], q_lev_ref[...]

  def body(j, dq):
    keys = pl.ds(pl.multiple_of(j * block_k, block_k), block_k)
    k, v = k_ref[keys, :], v_ref[keys, :]
    visible = kv_lev_ref[keys][None, :] <= q_lev[:, None]
    s = jnp.where(visible, _dot(q, k, _NT, precision) * scale, -jnp.inf)
    p = jnp.exp(s - lse[:, None])
    ds = p * (_dot(do, v, _NT, precision) - delta[:, None])
    return dq + _dot(ds.astype(k.dtype), k, _NN, precision)

  dq = lax.fori_loop(lo_ref[i], hi_ref[i], body,
                     jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _dkv_kernel(lo_ref, hi_ref, q_ref, k_ref, v_ref, do_ref, lse_ref,
                delta_ref, q_lev_ref, kv_lev_ref, dk_ref, dv_ref, *, scale,
                block_q, precision):
  # Works on transposed [bk, bq] tiles so that dk, dv are plain NN products.
  j = pl.program_id(0)
  k, v, kv_lev = k_ref[...], v_ref[...], kv_lev_ref[...]

  def body(i, carry):
    dk, dv = carry
    rows = pl.ds(pl.multiple_of(i * block_q, block_q), block_q)
    q, do = q_ref[rows, :], do_ref[rows, :]
    visible = kv_lev[:, None] <= q_lev_ref[rows][None, :]
    s_t = jnp.where(visible, _dot(k, q, _NT, precision) * scale, -jnp.inf)
    p_t = jnp.exp(s_t - lse_ref[rows][None, :])
    dv = dv + _dot(p_t.astype(do.dtype), do, _NN, precision)
    ds_t = p_t * (_dot(v, do, _NT, precision) - delta_ref[rows][None, :])
    dk = dk + _dot(ds_t.astype(q.dtype), q, _NN, precision)
    return dk, dv

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = lax.fori_loop(lo_ref[j], hi_ref[j], body, (zeros, zeros))
  dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _specs(block, full_len, d):
  """(blocked, whole) BlockSpecs of a [B, H, S, D] array on a (n, b, h) grid."""
  return (pl.BlockSpec((None, None, block, d), lambda n, b, h: (b, h, n, 0)),
          pl.BlockSpec((None, None, full_len, d),
                       lambda n, b, h: (b, h, 0, 0)))


def _rows(block):
  """BlockSpec of block n of a per-(b, h) [B, H, S] vector (lse, delta)."""
  return pl.BlockSpec((None, None, block), lambda n, b, h: (b, h, n))


def _rows_full(length):
  return pl.BlockSpec((None, None, length), lambda n, b, h: (b, h, 0))


def _shared(length, block=None):
  """BlockSpec of a [length] vector shared by all (b, h): levels, ranges."""
  if block is None:
    return pl.BlockSpec((length,), lambda n, b, h: (0,))
  return pl.BlockSpec((block,), lambda n, b, h: (n,))


def block_causal_fwd(q, k, v, q_lev, kv_lev, plan, *, scale, block_q,
                     block_k, interpret):
  """Forward over padded inputs.

  Args:
    q, k, v: padded [B, H, S, D]; q_lev, kv_lev: padded int32 level ids.
    plan: (k_lo, k_hi, q_lo, q_hi, q_min, kv_max) block tables for
      (block_q, block_k), see attention.block_plan.
    scale, block_q, block_k, interpret: static.

  Returns:
    (o [B, H, Sq, D] in q's dtype, lse f32 [B, H, Sq]).
  """
  k_lo, k_hi = plan[:2]
  bsz, heads, sq, d = q.shape
  sk = k.shape[2]
  nq = sq // block_q
  q_spec, _ = _specs(block_q, sq, d)
  _, kv_spec = _specs(block_k, sk, d)
  return pl.pallas_call(
      functools.partial(_fwd_kernel, scale=scale, block_k=block_k,
                        precision=attention_reference.dot_precision(q.dtype)),
      out_shape=(jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((bsz, heads, sq), jnp.float32)),
      grid=(nq, bsz, heads),
      in_specs=[_shared(nq), _shared(nq), q_spec, kv_spec, kv_spec,
                _shared(sq, block_q), _shared(sk)],
      out_specs=(q_spec, _rows(block_q)),
      compiler_params=plgpu.CompilerParams(num_warps=_NUM_WARPS,
                                           num_stages=_NUM_STAGES),
      interpret=interpret,
      name="block_causal_attention_fwd",
  )(k_lo, k_hi, q, k, v, q_lev, kv_lev)


def block_causal_bwd(q, k, v, do, lse, delta, q_lev, kv_lev, plan, *,
                     scale, block_q, block_k, interpret):
  """Backward over padded inputs; lse, delta f32 [B, H, Sq]; see fwd."""
  bsz, heads, sq, d = q.shape
  sk = k.shape[2]
  k_lo, k_hi, q_lo, q_hi = plan[:4]
  nq, nk = sq // block_q, sk // block_k
  precision = attention_reference.dot_precision(q.dtype)
  params = plgpu.CompilerParams(num_warps=_NUM_WARPS, num_stages=_NUM_STAGES)
  q_block, q_full = _specs(block_q, sq, d)
  k_block, k_full = _specs(block_k, sk, d)
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, scale=scale, block_k=block_k,
                        precision=precision),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      grid=(nq, bsz, heads),
      in_specs=[_shared(nq), _shared(nq), q_block, k_full, k_full, q_block,
                _rows(block_q), _rows(block_q), _shared(sq, block_q),
                _shared(sk)],
      out_specs=q_block,
      compiler_params=params,
      interpret=interpret,
      name="block_causal_attention_dq",
  )(k_lo, k_hi, q, k, v, do, lse, delta, q_lev, kv_lev)
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, scale=scale, block_q=block_q,
                        precision=precision),
      out_shape=(jax.ShapeDtypeStruct(k.shape, k.dtype),
                 jax.ShapeDtypeStruct(v.shape, v.dtype)),
      grid=(nk, bsz, heads),
      in_specs=[_shared(nk), _shared(nk), q_full, k_block, k_block, q_full,
                _rows_full(sq), _rows_full(sq), _shared(sq),
                _shared(sk, block_k)],
      out_specs=(k_block, k_block),
      compiler_params=params,
      interpret=interpret,
      name="block_causal_attention_dkv",
  )(q_lo, q_hi, q, k, v, do, lse, delta, q_lev, kv_lev)
  return dq, dk, dv


# ----------------------------------------------------------------------------
# Cached (sampling) attention.
# ----------------------------------------------------------------------------


def _cached_kernel(len_ref, q_ref, k_ref, v_ref, o_ref, *, scale, block_k,
                   precision):
  kv_len = len_ref[0]
  s_max = k_ref.shape[0]
  q = q_ref[...]

  def body(j, carry):
    # The cache is not padded (that would copy it every step), so the last
    # block is moved back to end at s_max; keys it shares with the previous
    # block (pos < j * block_k) are masked so none is counted twice.
    start = jnp.minimum(j * block_k, s_max - block_k)
    pos = start + lax.broadcasted_iota(jnp.int32, (block_k,), 0)
    valid = (pos >= j * block_k) & (pos < kv_len)
    keys = pl.ds(start, block_k)
    s = jnp.where(valid[None, :],
                  _dot(q, k_ref[keys, :], _NT, precision) * scale, -jnp.inf)
    # Invalid cache rows may hold anything; 0 * inf would poison p @ v.
    v = jnp.where(valid[:, None], v_ref[keys, :], 0).astype(v_ref.dtype)
    return _online_softmax_step(s, v, carry, precision)

  carry = lax.fori_loop(0, pl.cdiv(kv_len, block_k), body,
                        _init_carry(*q.shape))
  _write_output(carry, o_ref, None)


def cached_fwd(q, k_cache, v_cache, kv_length, *, scale, block_q, block_k,
               interpret):
  """q [B,H,Lq,D] (Lq a block multiple), caches [B,H,S_max>=block_k,D]."""
  bsz, heads, lq, d = q.shape
  s_max = k_cache.shape[2]
  q_spec, _ = _specs(block_q, lq, d)
  _, kv_spec = _specs(block_k, s_max, d)
  return pl.pallas_call(
      functools.partial(_cached_kernel, scale=scale, block_k=block_k,
                        precision=attention_reference.dot_precision(q.dtype)),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      grid=(lq // block_q, bsz, heads),
      in_specs=[_shared(1), q_spec, kv_spec, kv_spec],
      out_specs=q_spec,
      compiler_params=plgpu.CompilerParams(num_warps=_NUM_WARPS,
                                           num_stages=_NUM_STAGES),
      interpret=interpret,
      name="cached_attention",
  )(kv_length.reshape(1), q, k_cache, v_cache)
