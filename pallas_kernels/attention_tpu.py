"""Mosaic (TPU) Pallas kernels for HART's attention ops.

Each kernel runs on a 4-D grid (b, h, outer block, inner block) whose inner
axis is sequential ("arbitrary"): Pallas pipelines the inner operand blocks
HBM -> VMEM while the accumulators sit in VMEM scratch (flash-attention
style). The per-block [lo, hi) ranges and level extrema computed by
attention.py arrive by scalar prefetch (SMEM), and are used twice:

  * in the index maps: an inner index outside [lo, hi) is clamped into it,
    so the block index does not change and Pallas skips the DMA;
  * in the kernel: pl.when runs the step only inside [lo, hi), and picks a
    cheaper unmasked path when the whole tile is visible (every key level
    <= every query level), which is most tiles in HART.

Layouts follow what Mosaic handles well (as in upstream splash attention):
row statistics (m, l) are kept lane-broadcast as [bq, 128]; query levels
come in as [S, 128] and key levels as [8, S] (broadcast copies made once
outside), so the mask is a plain [bq, bk] compare; the logsumexp and delta
residuals are stored lane-dense as [B, H, 1, S], and the dk/dv kernel works
on transposed [bk, bq] tiles so that it reads them as rows without any
transpose. Block sizes must be multiples of 128.
"""

import functools

import jax
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
import jax.numpy as jnp

from pallas_kernels import attention_reference

LANES = 128
SUBLANES = 8
_M_INIT = -1e30  # See attention_gpu._M_INIT.
_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_NN = (((1,), (0,)), ((), ()))  # a @ b


def _dot(a, b, dims, precision):
  return lax.dot_general(a, b, dims, precision=precision,
                         preferred_element_type=jnp.float32)


def fit_block(requested: int, length: int) -> int:
  """Block size for a sequence of `length`: shrunk to the padded length."""
  if requested <= 0 or requested % LANES:
    raise ValueError(
        f"TPU block sizes must be positive multiples of {LANES}, got "
        f"{requested}")
  return min(requested, -(-length // LANES) * LANES)


def padded_head_dim(d: int) -> int:
  return d  # A block dim equal to the array dim is always legal.


def _widen(x, n):
  """[r, 128] lane-broadcast statistics -> [r, n] (n lanes of the same)."""
  reps = -(-n // LANES)
  x = jnp.tile(x, (1, reps)) if reps > 1 else x
  return x if x.shape[1] == n else x[:, :n]


def _clamp(j, lo, hi):
  """j clamped into [lo, hi - 1] (to lo for an empty range)."""
  return jnp.minimum(jnp.maximum(j, lo), jnp.maximum(hi - 1, lo))


def _params():
  return pltpu.CompilerParams(
      dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"))


def _interpret(interpret):
  # TPU interpret mode simulates VMEM/SMEM and fills out-of-bounds block
  # reads with NaN, which the tests rely on.
  return pltpu.InterpretParams() if interpret else False


def _softmax_step(s, v, m_ref, l_ref, acc_ref, precision):
  """Online-softmax update of the VMEM accumulators with a logit tile."""
  m_prev, l_prev = m_ref[...], l_ref[...]
  m_next = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
  p = jnp.exp(s - _widen(m_next, s.shape[1]))
  alpha = jnp.exp(m_prev - m_next)
  m_ref[...] = m_next
  l_ref[...] = alpha * l_prev + jnp.sum(p, axis=1, keepdims=True)
  acc_ref[...] = (_widen(alpha, acc_ref.shape[1]) * acc_ref[...]
                  + _dot(p.astype(v.dtype), v, _NN, precision))


def _init(m_ref, l_ref, acc_ref):
  m_ref[...] = jnp.full(m_ref.shape, _M_INIT, jnp.float32)
  l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
  acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)


def _finish(m_ref, l_ref, acc_ref, o_ref, lse_ref):
  m, l = m_ref[...], l_ref[...]
  empty = l == 0.0  # The row saw no key: output 0, lse +inf (p = 0 in bwd).
  inv = 1.0 / jnp.where(empty, 1.0, l)
  o_ref[...] = (acc_ref[...] * _widen(inv, acc_ref.shape[1])).astype(
      o_ref.dtype)
  if lse_ref is not None:
    lse = jnp.where(empty, jnp.inf, m + jnp.log(l))  # [bq, 128], lanes equal
    lse_ref[...] = lse.T[:1, :]  # -> lane-dense [1, bq]


# ----------------------------------------------------------------------------
# Block-causal training attention.
# ----------------------------------------------------------------------------


def _run_step(step, run, partial):
  """Runs `step` on a block pair that `run` selects: with the level mask
  where `partial` (the pair straddles a level boundary), without it where
  every key is visible to every query."""
  pl.when(run & partial)(lambda: step(True))
  pl.when(run & jnp.logical_not(partial))(lambda: step(False))


def _fwd_kernel(lo_ref, hi_ref, q_min_ref, kv_max_ref, q_ref, k_ref, v_ref,
                q_lev_ref, kv_lev_ref, o_ref, lse_ref, m_ref, l_ref, acc_ref,
                *, scale, precision):
  i, j = pl.program_id(2), pl.program_id(3)

  pl.when(j == 0)(lambda: _init(m_ref, l_ref, acc_ref))

  def step(masked):
    s = _dot(q_ref[...], k_ref[...], _NT, precision) * scale
    if masked:
      visible = kv_lev_ref[:1, :] <= _widen(q_lev_ref[...], s.shape[1])
      s = jnp.where(visible, s, -jnp.inf)
    _softmax_step(s, v_ref[...], m_ref, l_ref, acc_ref, precision)

  run = (j >= lo_ref[i]) & (j < hi_ref[i])
  partial = kv_max_ref[j] > q_min_ref[i]
  _run_step(step, run, partial)

  @pl.when(j == pl.num_programs(3) - 1)
  def _():
    _finish(m_ref, l_ref, acc_ref, o_ref, lse_ref)


def _dq_kernel(lo_ref, hi_ref, q_min_ref, kv_max_ref, q_ref, k_ref, v_ref,
               do_ref, lse_ref, delta_ref, q_lev_ref, kv_lev_ref, dq_ref,
               acc_ref, *, scale, precision):
  i, j = pl.program_id(2), pl.program_id(3)

  @pl.when(j == 0)
  def _():
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  def step(masked):
    k, v, do = k_ref[...], v_ref[...], do_ref[...]
    s = _dot(q_ref[...], k, _NT, precision) * scale
    if masked:
      visible = kv_lev_ref[:1, :] <= _widen(q_lev_ref[...], s.shape[1])
      s = jnp.where(visible, s, -jnp.inf)
    # Lane-dense [1, bq] residual rows -> [bq, 1] columns.
    p = jnp.exp(s - lse_ref[0][:, None])
    ds = p * (_dot(do, v, _NT, precision) - delta_ref[0][:, None])
    acc_ref[...] += _dot(ds.astype(k.dtype), k, _NN, precision)

  run = (j >= lo_ref[i]) & (j < hi_ref[i])
  partial = kv_max_ref[j] > q_min_ref[i]
  _run_step(step, run, partial)

  @pl.when(j == pl.num_programs(3) - 1)
  def _():
    dq_ref[...] = (acc_ref[...] * scale).astype(dq_ref.dtype)


def _dkv_kernel(lo_ref, hi_ref, q_min_ref, kv_max_ref, q_ref, k_ref, v_ref,
                do_ref, lse_ref, delta_ref, q_lev_ref, kv_lev_ref, dk_ref,
                dv_ref, dk_acc_ref, dv_acc_ref, *, scale, precision):
  j, i = pl.program_id(2), pl.program_id(3)  # key block, query block

  @pl.when(i == 0)
  def _():
    dk_acc_ref[...] = jnp.zeros(dk_acc_ref.shape, jnp.float32)
    dv_acc_ref[...] = jnp.zeros(dv_acc_ref.shape, jnp.float32)

  def step(masked):
    q, do = q_ref[...], do_ref[...]
    s_t = _dot(k_ref[...], q, _NT, precision) * scale  # [bk, bq]
    if masked:
      visible = _widen(kv_lev_ref[...], s_t.shape[1]) <= q_lev_ref[:1, :]
      s_t = jnp.where(visible, s_t, -jnp.inf)
    p_t = jnp.exp(s_t - lse_ref[...])
    dv_acc_ref[...] += _dot(p_t.astype(do.dtype), do, _NN, precision)
    ds_t = p_t * (_dot(v_ref[...], do, _NT, precision) - delta_ref[...])
    dk_acc_ref[...] += _dot(ds_t.astype(q.dtype), q, _NN, precision)

  run = (i >= lo_ref[j]) & (i < hi_ref[j])
  partial = kv_max_ref[j] > q_min_ref[i]
  _run_step(step, run, partial)

  @pl.when(i == pl.num_programs(3) - 1)
  def _():
    dk_ref[...] = (dk_acc_ref[...] * scale).astype(dk_ref.dtype)
    dv_ref[...] = dv_acc_ref[...].astype(dv_ref.dtype)


def _level_layouts(q_lev, kv_lev):
  """Query levels as [S_q, 128] columns, key levels as [8, S_k] rows."""
  return (jnp.broadcast_to(q_lev[:, None], (q_lev.shape[0], LANES)),
          jnp.broadcast_to(kv_lev[None, :], (SUBLANES, kv_lev.shape[0])))


def block_causal_fwd(q, k, v, q_lev, kv_lev, plan, *, scale, block_q,
                     block_k, interpret):
  """Forward over padded inputs.

  Args:
    q, k, v: padded [B, H, S, D]; q_lev, kv_lev: padded int32 level ids.
    plan: (k_lo, k_hi, q_lo, q_hi, q_min, kv_max) block tables for
      (block_q, block_k), see attention.block_plan.
    scale, block_q, block_k, interpret: static.

  Returns:
    (o [B, H, Sq, D] in q's dtype, lse f32 [B, H, 1, Sq]).
  """
  k_lo, k_hi, _, _, q_min, kv_max = plan
  bsz, heads, sq, d = q.shape
  grid = (bsz, heads, sq // block_q, k.shape[2] // block_k)

  def kv_map(b, h, i, j, lo, hi, *_):
    return b, h, _clamp(j, lo[i], hi[i]), 0

  def kv_lev_map(b, h, i, j, lo, hi, *_):
    return 0, _clamp(j, lo[i], hi[i])

  q_spec = pl.BlockSpec((None, None, block_q, d), lambda b, h, i, j, *_:
                        (b, h, i, 0))
  kv_spec = pl.BlockSpec((None, None, block_k, d), kv_map)
  lse_spec = pl.BlockSpec((None, None, 1, block_q), lambda b, h, i, j, *_:
                          (b, h, 0, i))
  q_lev2, kv_lev2 = _level_layouts(q_lev, kv_lev)
  return pl.pallas_call(
      functools.partial(_fwd_kernel, scale=scale,
                        precision=attention_reference.dot_precision(q.dtype)),
      out_shape=(jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((bsz, heads, 1, sq), jnp.float32)),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=4,
          grid=grid,
          in_specs=[
              q_spec, kv_spec, kv_spec,
              pl.BlockSpec((block_q, LANES), lambda b, h, i, j, *_: (i, 0)),
              pl.BlockSpec((SUBLANES, block_k), kv_lev_map),
          ],
          out_specs=(q_spec, lse_spec),
          scratch_shapes=[pltpu.VMEM((block_q, LANES), jnp.float32),
                          pltpu.VMEM((block_q, LANES), jnp.float32),
                          pltpu.VMEM((block_q, d), jnp.float32)]),
      compiler_params=_params(),
      interpret=_interpret(interpret),
      name="block_causal_attention_fwd",
  )(k_lo, k_hi, q_min, kv_max, q, k, v, q_lev2, kv_lev2)


def block_causal_bwd(q, k, v, do, lse, delta, q_lev, kv_lev, plan, *,
                     scale, block_q, block_k, interpret):
  """Backward over padded inputs.

  Args:
    q, k, v, do: padded [B, H, S, D]; lse, delta: f32 [B, H, 1, Sq].
    q_lev, kv_lev: padded int32 level ids.
    plan: block tables as for block_causal_fwd.
    scale, block_q, block_k, interpret: as for block_causal_fwd.

  Returns:
    (dq, dk, dv) in the dtypes of q, k, v.
  """
  bsz, heads, sq, d = q.shape
  sk = k.shape[2]
  nq, nk = sq // block_q, sk // block_k
  k_lo, k_hi, q_lo, q_hi, q_min, kv_max = plan
  precision = attention_reference.dot_precision(q.dtype)
  q_lev_col, kv_lev_row = _level_layouts(q_lev, kv_lev)
  kv_lev_col, q_lev_row = _level_layouts(kv_lev, q_lev)

  # dq: grid (b, h, query block i, key block j); j is clamped into k range.
  def kv_map(b, h, i, j, lo, hi, *_):
    return b, h, _clamp(j, lo[i], hi[i]), 0

  q_spec = pl.BlockSpec((None, None, block_q, d), lambda b, h, i, j, *_:
                        (b, h, i, 0))
  row_spec = pl.BlockSpec((None, None, 1, block_q), lambda b, h, i, j, *_:
                          (b, h, 0, i))
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, scale=scale, precision=precision),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=4,
          grid=(bsz, heads, nq, nk),
          in_specs=[
              q_spec,
              pl.BlockSpec((None, None, block_k, d), kv_map),
              pl.BlockSpec((None, None, block_k, d), kv_map),
              q_spec, row_spec, row_spec,
              pl.BlockSpec((block_q, LANES), lambda b, h, i, j, *_: (i, 0)),
              pl.BlockSpec((SUBLANES, block_k), lambda b, h, i, j, lo, hi, *_:
                           (0, _clamp(j, lo[i], hi[i]))),
          ],
          out_specs=q_spec,
          scratch_shapes=[pltpu.VMEM((block_q, d), jnp.float32)]),
      compiler_params=_params(),
      interpret=_interpret(interpret),
      name="block_causal_attention_dq",
  )(k_lo, k_hi, q_min, kv_max, q, k, v, do, lse, delta, q_lev_col,
    kv_lev_row)

  # dk, dv: grid (b, h, key block j, query block i); i clamped into q range.
  def q_map(b, h, j, i, lo, hi, *_):
    return b, h, _clamp(i, lo[j], hi[j]), 0

  def q_row_map(b, h, j, i, lo, hi, *_):
    return b, h, 0, _clamp(i, lo[j], hi[j])

  k_spec = pl.BlockSpec((None, None, block_k, d), lambda b, h, j, i, *_:
                        (b, h, j, 0))
  q_spec = pl.BlockSpec((None, None, block_q, d), q_map)
  row_spec = pl.BlockSpec((None, None, 1, block_q), q_row_map)
  return (dq,) + pl.pallas_call(
      functools.partial(_dkv_kernel, scale=scale, precision=precision),
      out_shape=(jax.ShapeDtypeStruct(k.shape, k.dtype),
                 jax.ShapeDtypeStruct(v.shape, v.dtype)),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=4,
          grid=(bsz, heads, nk, nq),
          in_specs=[
              q_spec, k_spec, k_spec, q_spec, row_spec, row_spec,
              pl.BlockSpec((SUBLANES, block_q), lambda b, h, j, i, lo, hi, *_:
                           (0, _clamp(i, lo[j], hi[j]))),
              pl.BlockSpec((block_k, LANES), lambda b, h, j, i, *_: (j, 0)),
          ],
          out_specs=(k_spec, k_spec),
          scratch_shapes=[pltpu.VMEM((block_k, d), jnp.float32),
                          pltpu.VMEM((block_k, d), jnp.float32)]),
      compiler_params=_params(),
      interpret=_interpret(interpret),
      name="block_causal_attention_dkv",
  )(q_lo, q_hi, q_min, kv_max, q, k, v, do, lse, delta, q_lev_row,
    kv_lev_col)


# ----------------------------------------------------------------------------
# Cached (sampling) attention.
# ----------------------------------------------------------------------------


def _cached_kernel(len_ref, q_ref, k_ref, v_ref, o_ref, m_ref, l_ref,
                   acc_ref, *, scale, precision):
  j = pl.program_id(3)
  kv_len = len_ref[0]
  block_k = k_ref.shape[0]

  pl.when(j == 0)(lambda: _init(m_ref, l_ref, acc_ref))

  @pl.when((j + 1) * block_k <= kv_len)  # All keys of the block are valid.
  def _():
    s = _dot(q_ref[...], k_ref[...], _NT, precision) * scale
    _softmax_step(s, v_ref[...], m_ref, l_ref, acc_ref, precision)

  @pl.when((j * block_k < kv_len) & ((j + 1) * block_k > kv_len))
  def _():
    # The block holding the end of the valid keys. Past it the cache may
    # hold anything (a partial last block even reads out of bounds), so the
    # logits are masked and V's invalid rows zeroed: 0 * NaN is NaN.
    s = _dot(q_ref[...], k_ref[...], _NT, precision) * scale
    pos = j * block_k + lax.broadcasted_iota(jnp.int32, s.shape, 1)
    s = jnp.where(pos < kv_len, s, -jnp.inf)
    v = v_ref[...]
    row = j * block_k + lax.broadcasted_iota(jnp.int32, v.shape, 0)
    # Selected in float32: bf16 vector selects are not native on all TPUs.
    v = jnp.where(row < kv_len, v.astype(jnp.float32), 0.0).astype(v.dtype)
    _softmax_step(s, v, m_ref, l_ref, acc_ref, precision)

  @pl.when(j == pl.num_programs(3) - 1)
  def _():
    _finish(m_ref, l_ref, acc_ref, o_ref, None)


def cached_fwd(q, k_cache, v_cache, kv_length, *, scale, block_q, block_k,
               interpret):
  """q [B,H,Lq,D] (Lq a block multiple), caches [B,H,S_max,D].

  S_max need not be a multiple of block_k: the last block then reads past
  the end of the cache, which the boundary step masks.
  """
  bsz, heads, lq, d = q.shape
  grid = (bsz, heads, lq // block_q, pl.cdiv(k_cache.shape[2], block_k))

  def kv_map(b, h, i, j, len_ref):
    # Blocks past the valid keys repeat the last valid one: no new DMA.
    last = jnp.maximum(pl.cdiv(len_ref[0], block_k) - 1, 0)
    return b, h, jnp.minimum(j, last), 0

  q_spec = pl.BlockSpec((None, None, block_q, d), lambda b, h, i, j, _:
                        (b, h, i, 0))
  kv_spec = pl.BlockSpec((None, None, block_k, d), kv_map)
  return pl.pallas_call(
      functools.partial(_cached_kernel, scale=scale,
                        precision=attention_reference.dot_precision(q.dtype)),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=1,
          grid=grid,
          in_specs=[q_spec, kv_spec, kv_spec],
          out_specs=q_spec,
          scratch_shapes=[pltpu.VMEM((block_q, LANES), jnp.float32),
                          pltpu.VMEM((block_q, LANES), jnp.float32),
                          pltpu.VMEM((block_q, d), jnp.float32)]),
      compiler_params=_params(),
      interpret=_interpret(interpret),
      name="cached_attention",
  )(kv_length.reshape(1), q, k_cache, v_cache)
