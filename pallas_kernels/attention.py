"""Pallas attention for HART: block-causal training and KV-cached sampling.

This module holds what the TPU (attention_tpu.py) and GPU (attention_gpu.py)
kernels share: block-size configs, input checks, padding, the block plan
that makes the training kernels skip fully masked blocks, and the
jax.custom_vjp that gives the training op its Pallas backward.

Block skipping: query i sees key j iff kv_levels[j] <= q_levels[i], so a key
block is fully masked for a query block iff the key block's minimum level
exceeds the query block's maximum level. block_plan turns that [nq, nk]
visibility table into [lo, hi) ranges (key blocks per query block and query
blocks per key block) that the kernels loop over. With HART's non-decreasing
levels the visible blocks of a row form exactly such a range, so the work is
the block-causal fraction of S^2; for other levels the range can include
masked blocks, which the per-element mask keeps exact.

Padding: sequences are padded to block multiples. Padded keys get level
2**31 - 1 (real levels must be smaller), so they are masked everywhere;
padded queries repeat the last query level (so block extrema are unchanged)
and are sliced off; their zero cotangents add nothing to dk and dv.
"""

import dataclasses
import functools
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import attention_gpu
from pallas_kernels import attention_tpu


@dataclasses.dataclass(frozen=True)
class BlockCausalAttentionConfig:
  """Block sizes (tokens) of the training kernels.

  block_q/block_k tile the forward; block_q_bwd/block_k_bwd the dq and
  dk/dv kernels. GPU: powers of two >= 16. TPU: multiples of 128.
  """
  block_q: int
  block_k: int
  block_q_bwd: int
  block_k_bwd: int


@dataclasses.dataclass(frozen=True)
class CachedAttentionConfig:
  """Block sizes of the sampling kernel: queries and cache rows per step.

  GPU: powers of two >= 16. TPU: block_q a multiple of 8, block_k of 128.
  """
  block_q: int
  block_k: int


# TPU: a [256, 512] f32 logit tile is 512 KiB of VMEM; with its few
# temporaries and the double-buffered q/k/v blocks (D = 64) the kernels stay
# well inside v5e's 16 MiB default scoped VMEM, and each grid step does
# enough matmul to hide the ~0.35 us per-step overhead. Not timed on a TPU
# (none is available to this project); every config in the benchmark's TPU
# sweep compiles for v5e at S = 9750 (benchmark_attention --tpu-aot).
TPU_BLOCK_CAUSAL_CONFIG = BlockCausalAttentionConfig(256, 512, 256, 512)
TPU_CACHED_CONFIG = CachedAttentionConfig(256, 512)
# GPU: register-resident tiles. Fastest on one H100 (jax 0.11.2, B=8, H=24,
# S=9750, D=64, bf16, 4 warps) of the forward tiles {64, 128} x {32, 64, 128}
# (128x64: 12.0 ms, 64x64: 12.5, 128x128: 12.9), the backward tiles
# {32, 64, 128} x {32, 64, 128} (64x64: fwd+bwd 39 ms, 128x64: 40, 32x32: 71)
# and the cached tiles at L_q = 4096 (128x64: 7.8 ms, 64x64: 8.6); for
# L_q <= 16 the query block shrinks to 16 and block_k 64, 128, 256 all gave
# 0.3-0.34 ms (bandwidth-bound).
GPU_BLOCK_CAUSAL_CONFIG = BlockCausalAttentionConfig(128, 64, 64, 64)
GPU_CACHED_CONFIG = CachedAttentionConfig(128, 64)

# Level of padded keys: above any real query level, so never visible.
_PAD_LEVEL = np.iinfo(np.int32).max


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def _check_scale(scale) -> float:
  if (not isinstance(scale, numbers.Real) or isinstance(scale, bool)
      or not math.isfinite(scale)):
    raise ValueError(
        f"attention: scale must be a finite Python number, got {scale!r}")
  return float(scale)


def _check_qkv(op, q, k, v):
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(
        f"{op} expects q, k, v of shape [B, H, S, D], got q.shape={q.shape}, "
        f"k.shape={k.shape}, v.shape={v.shape}")
  if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != (
      k.shape[3]):
    raise ValueError(
        f"{op}: k and v must have equal shapes and share B, H, D with q, got "
        f"q.shape={q.shape}, k.shape={k.shape}, v.shape={v.shape}")
  if not (q.dtype == k.dtype == v.dtype) or not jnp.issubdtype(
      q.dtype, jnp.floating):
    raise ValueError(
        f"{op}: q, k, v must share one float dtype, got {q.dtype}, "
        f"{k.dtype}, {v.dtype}")
  if min(q.shape) == 0 or k.shape[2] == 0:
    raise ValueError(f"{op}: empty input, q.shape={q.shape}, "
                     f"k.shape={k.shape}")


def check_block_causal_inputs(q, k, v, q_levels, kv_levels):
  """Raises ValueError on malformed inputs of block_causal_attention."""
  op = "block_causal_attention"
  _check_qkv(op, q, k, v)
  for name, lev, length in (("q_levels", q_levels, q.shape[2]),
                            ("kv_levels", kv_levels, k.shape[2])):
    if lev.shape != (length,) or not jnp.issubdtype(lev.dtype, jnp.integer):
      raise ValueError(
          f"{op}: {name} must be an integer array of shape ({length},), got "
          f"shape {lev.shape} and dtype {lev.dtype}")


def check_cached_inputs(q, k_cache, v_cache, kv_length):
  """Raises ValueError on malformed inputs of cached_attention."""
  _check_qkv("cached_attention", q, k_cache, v_cache)
  kv_length = jnp.asarray(kv_length)
  if kv_length.ndim != 0 or not jnp.issubdtype(kv_length.dtype, jnp.integer):
    raise ValueError(
        "cached_attention: kv_length must be an integer scalar, got shape "
        f"{kv_length.shape} and dtype {kv_length.dtype}")


def _resolve_interpret(interpret):
  # Kernels only compile for TPU/GPU; on CPU interpreting is the only option.
  if interpret is None:
    return jax.default_backend() == "cpu"
  return interpret


def _pad_axis(x, axis, size, **kwargs):
  if x.shape[axis] == size:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, widths, **kwargs)


def _pad_bhsd(x, s, d):
  return _pad_axis(_pad_axis(x, 2, s), 3, d)


def _span(visible):
  """[lo, hi) of the True entries of each row of a [n, m] bool table."""
  m = visible.shape[1]
  any_visible = jnp.any(visible, axis=1)
  lo = jnp.argmax(visible, axis=1)
  hi = m - jnp.argmax(visible[:, ::-1], axis=1)
  return (jnp.where(any_visible, lo, 0).astype(jnp.int32),
          jnp.where(any_visible, hi, 0).astype(jnp.int32))


def block_plan(q_lev, kv_lev, block_q, block_k):
  """Block tables for padded level ids (lengths multiples of the blocks).

  Returns:
    (k_lo, k_hi, q_lo, q_hi, q_min, kv_max), int32: query block i visits key
    blocks [k_lo[i], k_hi[i]); key block j is visited by query blocks
    [q_lo[j], q_hi[j]); q_min / kv_max are per-block level extrema (a tile
    with kv_max[j] <= q_min[i] needs no element mask).
  """
  q_blocks = q_lev.reshape(-1, block_q)
  kv_blocks = kv_lev.reshape(-1, block_k)
  q_max = jnp.max(q_blocks, axis=1)
  kv_min = jnp.min(kv_blocks, axis=1)
  visible = kv_min[None, :] <= q_max[:, None]  # [nq, nk]
  k_lo, k_hi = _span(visible)
  q_lo, q_hi = _span(visible.T)
  return (k_lo, k_hi, q_lo, q_hi,
          jnp.min(q_blocks, axis=1).astype(jnp.int32),
          jnp.max(kv_blocks, axis=1).astype(jnp.int32))


def _block_causal(kernels, default_config, q, k, v, q_levels, kv_levels,
                  scale, config, interpret):
  """Pads, runs `kernels` (a kernel module) and attaches the Pallas VJP."""
  check_block_causal_inputs(q, k, v, q_levels, kv_levels)
  scale = _check_scale(scale)
  config = default_config if config is None else config
  interpret = _resolve_interpret(interpret)
  (_, _, sq, d), sk = q.shape, k.shape[2]
  bq, bq_bwd = (kernels.fit_block(b, sq)
                for b in (config.block_q, config.block_q_bwd))
  bk, bk_bwd = (kernels.fit_block(b, sk)
                for b in (config.block_k, config.block_k_bwd))
  sq_pad = _round_up(sq, math.lcm(bq, bq_bwd))
  sk_pad = _round_up(sk, math.lcm(bk, bk_bwd))
  d_pad = kernels.padded_head_dim(d)

  def forward(q, k, v, q_levels, kv_levels):
    q_lev = _pad_axis(q_levels.astype(jnp.int32), 0, sq_pad, mode="edge")
    kv_lev = _pad_axis(kv_levels.astype(jnp.int32), 0, sk_pad,
                       constant_values=_PAD_LEVEL)
    qp, kp, vp = (_pad_bhsd(q, sq_pad, d_pad), _pad_bhsd(k, sk_pad, d_pad),
                  _pad_bhsd(v, sk_pad, d_pad))
    o, lse = kernels.block_causal_fwd(
        qp, kp, vp, q_lev, kv_lev, block_plan(q_lev, kv_lev, bq, bk),
        scale=scale, block_q=bq, block_k=bk, interpret=interpret)
    return o[:, :, :sq, :d], (qp, kp, vp, o, lse, q_lev, kv_lev)

  def backward(res, do):
    qp, kp, vp, o, lse, q_lev, kv_lev = res
    do = _pad_bhsd(do, sq_pad, d_pad)
    # delta_i = sum_d o_id do_id: O(S D), cheap enough for XLA.
    delta = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), axis=-1)
    dq, dk, dv = kernels.block_causal_bwd(
        qp, kp, vp, do, lse, delta.reshape(lse.shape), q_lev, kv_lev,
        block_plan(q_lev, kv_lev, bq_bwd, bk_bwd), scale=scale,
        block_q=bq_bwd, block_k=bk_bwd, interpret=interpret)
    # Integer level ids get no cotangent.
    return (dq[:, :, :sq, :d], dk[:, :, :sk, :d], dv[:, :, :sk, :d], None,
            None)

  attention = jax.custom_vjp(lambda *args: forward(*args)[0])
  attention.defvjp(forward, backward)
  return attention(q, k, v, q_levels, kv_levels)


def _cached(kernels, default_config, q, k_cache, v_cache, kv_length, scale,
            config, interpret, fit_q, fit_k):
  """Pads the (small) queries, and the cache only if shorter than a block."""
  check_cached_inputs(q, k_cache, v_cache, kv_length)
  scale = _check_scale(scale)
  config = default_config if config is None else config
  (_, _, lq, d), s_max = q.shape, k_cache.shape[2]
  bq, bk = fit_q(config.block_q, lq), fit_k(config.block_k, s_max)
  d_pad = kernels.padded_head_dim(d)
  s_pad = max(s_max, bk)
  # Keys at or past kv_length are ignored, so clipping changes nothing.
  kv_length = jnp.clip(jnp.asarray(kv_length, jnp.int32), 0, s_max)
  o = kernels.cached_fwd(
      _pad_bhsd(q, _round_up(lq, bq), d_pad),
      _pad_bhsd(k_cache, s_pad, d_pad), _pad_bhsd(v_cache, s_pad, d_pad),
      kv_length, scale=scale, block_q=bq, block_k=bk,
      interpret=_resolve_interpret(interpret))
  return o[:, :, :lq, :d]


def _tpu_fit_cached_q(requested, length):
  if requested <= 0 or requested % attention_tpu.SUBLANES:
    raise ValueError(
        "TPU cached_attention block_q must be a positive multiple of "
        f"{attention_tpu.SUBLANES}, got {requested}")
  return min(requested, _round_up(length, attention_tpu.SUBLANES))


# The public variants. Training: q [B, H, S_q, D], k, v [B, H, S_k, D],
# integer q_levels [S_q] and kv_levels [S_k]; sampling: q [B, H, L_q, D],
# caches [B, H, S_max, D], int scalar kv_length. config None = the backend's
# default, interpret None = only on CPU. Outputs have q's shape and dtype.

_STATIC = ("scale", "config", "interpret")


@functools.partial(jax.jit, static_argnames=_STATIC)
def block_causal_attention_pallas_tpu(q, k, v, q_levels, kv_levels, *, scale,
                                      config=None, interpret=None):
  """Block-causal attention (differentiable) with the Mosaic TPU kernels."""
  return _block_causal(attention_tpu, TPU_BLOCK_CAUSAL_CONFIG, q, k, v,
                       q_levels, kv_levels, scale, config, interpret)


@functools.partial(jax.jit, static_argnames=_STATIC)
def block_causal_attention_pallas_gpu(q, k, v, q_levels, kv_levels, *, scale,
                                      config=None, interpret=None):
  """Block-causal attention (differentiable) with the Triton GPU kernels."""
  return _block_causal(attention_gpu, GPU_BLOCK_CAUSAL_CONFIG, q, k, v,
                       q_levels, kv_levels, scale, config, interpret)


@functools.partial(jax.jit, static_argnames=_STATIC)
def cached_attention_pallas_tpu(q, k_cache, v_cache, kv_length, *, scale,
                                config=None, interpret=None):
  """KV-cached attention (forward only) with the Mosaic TPU kernel."""
  return _cached(attention_tpu, TPU_CACHED_CONFIG, q, k_cache, v_cache,
                 kv_length, scale, config, interpret, _tpu_fit_cached_q,
                 attention_tpu.fit_block)


@functools.partial(jax.jit, static_argnames=_STATIC)
def cached_attention_pallas_gpu(q, k_cache, v_cache, kv_length, *, scale,
                                config=None, interpret=None):
  """KV-cached attention (forward only) with the Triton GPU kernel."""
  return _cached(attention_gpu, GPU_CACHED_CONFIG, q, k_cache, v_cache,
                 kv_length, scale, config, interpret, attention_gpu.fit_block,
                 attention_gpu.fit_block)
