"""Tests of the Pallas attention kernels against the jnp references.

Kernels run interpreted on CPU: the Triton variant with interpret=True, the
TPU variant under pltpu.force_tpu_interpret_mode(). Shapes are HART's real
training sequences (S = 979 at 256 px, 2539 at 512 px) plus a tiny S = 37,
with B = 1, H = 2, D = 64 to keep interpret mode fast.
"""

import jax
from jax.experimental.pallas import tpu as pltpu
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import attention
from pallas_kernels import attention_gpu
from pallas_kernels import attention_reference as ref
from pallas_kernels import attention_tpu
from pallas_kernels import BlockCausalAttentionConfig
from pallas_kernels import CachedAttentionConfig
from pallas_kernels import ops

SCALE = 0.25 / 64 ** 0.5  # HART's 0.25 / sqrt(D) = 1/32.
PREFIX = 300
# The 256 / 512 px schedules without their first 1x1 scale.
SCHEDULE_256 = (2, 3, 4, 5, 6, 8, 10, 13, 16)
SCHEDULE_512 = (2, 3, 4, 6, 9, 13, 18, 24, 32)
# Small blocks so that S = 37 spans several blocks on the GPU kernels.
GPU_SMALL = BlockCausalAttentionConfig(16, 16, 16, 16)


def _levels(prefix, schedule):
  sizes = [prefix] + [p * p for p in schedule]
  return jnp.asarray(np.repeat(np.arange(len(sizes), dtype=np.int32), sizes))


LEVELS = {
    "tiny37": _levels(23, (1, 2, 3)),  # 23 + 1 + 4 + 9
    "hart979": _levels(PREFIX, SCHEDULE_256),
    "hart2539": _levels(PREFIX, SCHEDULE_512),
}
# Any level order is exact (only the skipping relies on the HART order).
LEVELS["shuffled37"] = jnp.asarray(
    np.random.default_rng(0).permutation(np.asarray(LEVELS["tiny37"])))


def _run_gpu(fn, *args, config=None, **kw):
  return fn(*args, scale=SCALE, config=config, interpret=True, **kw)


def _run_tpu(fn, *args, config=None, **kw):
  with pltpu.force_tpu_interpret_mode():
    return fn(*args, scale=SCALE, config=config, **kw)


TRAIN = {"gpu": (_run_gpu, attention.block_causal_attention_pallas_gpu),
         "tpu": (_run_tpu, attention.block_causal_attention_pallas_tpu)}
CACHED = {"gpu": (_run_gpu, attention.cached_attention_pallas_gpu),
          "tpu": (_run_tpu, attention.cached_attention_pallas_tpu)}


def _qkvw(s, dtype=jnp.float32, seed=0, s_k=None):
  kq, kk, kv, kw = jax.random.split(jax.random.key(seed), 4)
  s_k = s if s_k is None else s_k
  # Logits of std ~2 (not HART's ~0.25) so the online softmax's rescaling
  # really matters.
  q = 3.0 * jax.random.normal(kq, (1, 2, s, 64))
  k = 3.0 * jax.random.normal(kk, (1, 2, s_k, 64))
  v = jax.random.normal(kv, (1, 2, s_k, 64))
  w = jax.random.normal(kw, (1, 2, s, 64))
  return q.astype(dtype), k.astype(dtype), v.astype(dtype), w


def _assert_close(actual, expected, tol):
  """max |actual - expected| <= tol * max |expected| (a relative bound)."""
  actual = np.asarray(actual, np.float32)
  expected = np.asarray(expected, np.float32)
  assert actual.shape == expected.shape
  assert np.all(np.isfinite(actual))
  err = np.max(np.abs(actual - expected)) / np.max(np.abs(expected))
  assert err <= tol, f"relative error {err:.3g} > {tol:.3g}"


# (variant, q_levels, kv_levels, dtype, config). The f32 forward at S = 37
# and S = 979 is also checked by the gradient tests, through jax.vjp.
FORWARD_CASES = [("gpu", "shuffled37", jnp.float32, GPU_SMALL),
                 ("gpu", "hart2539", jnp.float32, None),
                 ("gpu", "hart979", jnp.bfloat16, None),
                 ("tpu", "shuffled37", jnp.float32, None),
                 ("tpu", "hart979", jnp.bfloat16, None)]


@pytest.mark.parametrize("variant,case,dtype,config", FORWARD_CASES)
def test_forward_matches_reference(variant, case, dtype, config):
  lev = LEVELS[case]
  q, k, v, _ = _qkvw(lev.shape[0], dtype)
  run, fn = TRAIN[variant]
  out = run(fn, q, k, v, lev, lev, config=config)
  assert out.dtype == dtype and out.shape == q.shape
  expected = ref.block_causal_attention_reference(q, k, v, lev, lev,
                                                  scale=SCALE)
  _assert_close(out, expected, 1e-5 if dtype == jnp.float32 else 2e-2)


def _vjp(attn, q, k, v, w):
  """(attn(q, k, v), grads of sum(attn(q, k, v) * w) wrt q, k, v)."""
  out, pullback = jax.vjp(attn, q, k, v)
  return (out,) + pullback(w)


# S_q = 37 queries (two of level -1, which see no key: zero output and
# gradient) against S_k = 45 keys; and HART's 256 px sequence.
GRAD_CASES = {
    "cross37x45": (jnp.asarray(np.r_[-1, -1, np.arange(35) // 7], jnp.int32),
                   jnp.asarray(np.arange(45) // 9, jnp.int32)),
    "hart979": (LEVELS["hart979"], LEVELS["hart979"]),
}


@pytest.mark.parametrize("variant,case,config", [
    ("gpu", "cross37x45", GPU_SMALL), ("gpu", "hart979", None),
    ("tpu", "cross37x45", None), ("tpu", "hart979", None)])
def test_forward_and_gradients_match_reference(variant, case, config):
  q_lev, kv_lev = GRAD_CASES[case]
  q, k, v, w = _qkvw(q_lev.shape[0], s_k=kv_lev.shape[0])
  run, fn = TRAIN[variant]
  got = run(lambda *a, **kw: _vjp(
      lambda q, k, v: fn(q, k, v, q_lev, kv_lev, **kw), *a), q, k, v, w,
            config=config)
  want = _vjp(lambda q, k, v: ref.block_causal_attention_reference(
      q, k, v, q_lev, kv_lev, scale=SCALE), q, k, v, w)
  for g, r in zip(got, want):
    _assert_close(g, r, 1e-5)
  if case == "cross37x45":
    assert np.all(np.asarray(got[0][:, :, :2]) == 0)
    assert np.all(np.asarray(got[1][:, :, :2]) == 0)


@pytest.mark.parametrize("kernels,config", [
    (attention_gpu, attention.GPU_BLOCK_CAUSAL_CONFIG),
    (attention_tpu, attention.TPU_BLOCK_CAUSAL_CONFIG)])
@pytest.mark.parametrize("case", ["hart979", "hart2539"])
def test_block_plan_visits_exactly_the_visible_blocks(kernels, config, case):
  lev = np.asarray(LEVELS[case])
  for bq, bk in ((config.block_q, config.block_k),
                 (config.block_q_bwd, config.block_k_bwd)):
    bq, bk = kernels.fit_block(bq, lev.size), kernels.fit_block(bk, lev.size)
    n = -(-lev.size // np.lcm(bq, bk)) * np.lcm(bq, bk)
    q_lev = np.pad(lev, (0, n - lev.size), mode="edge")
    kv_lev = np.pad(lev, (0, n - lev.size), constant_values=2**31 - 1)
    plan = [np.asarray(x) for x in attention.block_plan(
        jnp.asarray(q_lev), jnp.asarray(kv_lev), bq, bk)]
    k_lo, k_hi, q_lo, q_hi = plan[:4]
    # Brute force: a tile is needed iff one of its (i, j) pairs is visible.
    mask = kv_lev[None, :] <= q_lev[:, None]
    needed = mask.reshape(n // bq, bq, n // bk, bk).any(axis=(1, 3))
    in_k_range = np.arange(n // bk)[None, :] >= k_lo[:, None]
    in_k_range &= np.arange(n // bk)[None, :] < k_hi[:, None]
    in_q_range = np.arange(n // bq)[:, None] >= q_lo[None, :]
    in_q_range &= np.arange(n // bq)[:, None] < q_hi[None, :]
    np.testing.assert_array_equal(in_k_range, needed)
    np.testing.assert_array_equal(in_q_range, needed)
  # Block-causal skipping does skip (one tile covers all at tiny sizes).
  assert not needed.all() or lev.size <= max(bq, bk)


@pytest.mark.parametrize("variant", ["gpu", "tpu"])
def test_fully_masked_blocks_are_not_computed(variant):
  # Poison with NaN what a block-skipping kernel never reads: NaN in any
  # visited tile would reach the result (0 * NaN = NaN even under a mask).
  lev = LEVELS["hart979"]
  q, k, v, w = _qkvw(lev.shape[0])
  run, fn = TRAIN[variant]
  config = (attention.GPU_BLOCK_CAUSAL_CONFIG if variant == "gpu" else
            attention.TPU_BLOCK_CAUSAL_CONFIG)
  fit = (attention_gpu if variant == "gpu" else attention_tpu).fit_block
  bq, bk = fit(config.block_q, 979), fit(config.block_k, 979)
  bq_b, bk_b = fit(config.block_q_bwd, 979), fit(config.block_k_bwd, 979)
  assert PREFIX // bq > 0 and PREFIX // bq_b > 0, "no prefix-only block"

  def out_and_grads(q, k, v):
    return run(lambda *a, **kw: _vjp(
        lambda q, k, v: fn(q, k, v, lev, lev, **kw), *a), q, k, v, w)

  want = _vjp(lambda q, k, v: ref.block_causal_attention_reference(
      q, k, v, lev, lev, scale=SCALE), q, k, v, w)
  # Keys in blocks past the prefix are invisible to prefix-only query
  # blocks: those queries' outputs (forward) and dq must stay exact.
  first = -(-PREFIX // min(bk, bk_b)) * min(bk, bk_b)
  k_bad, v_bad = k.at[:, :, first:].set(jnp.nan), v.at[:, :, first:].set(
      jnp.nan)
  rows = (PREFIX // max(bq, bq_b)) * max(bq, bq_b)
  out, dq, _, _ = out_and_grads(q, k_bad, v_bad)
  _assert_close(out[:, :, :rows], want[0][:, :, :rows], 1e-5)
  _assert_close(dq[:, :, :rows], want[1][:, :, :rows], 1e-5)
  # Prefix-only query blocks are invisible to key blocks past the prefix:
  # those keys' dk, dv must stay exact with NaN queries in those blocks.
  rows = (PREFIX // bq_b) * bq_b
  first = -(-PREFIX // bk_b) * bk_b
  _, _, dk, dv = out_and_grads(q.at[:, :, :rows].set(jnp.nan), k, v)
  _assert_close(dk[:, :, first:], want[2][:, :, first:], 1e-5)
  _assert_close(dv[:, :, first:], want[3][:, :, first:], 1e-5)


def _poisoned_cache(s_max, kv_length, seed=1):
  _, k, v, _ = _qkvw(1, s_k=s_max, seed=seed)
  tail = jnp.arange(s_max)[:, None] >= kv_length
  # Huge keys would dominate the softmax and NaN values poison any sum,
  # so only a kernel that masks and skips the tail stays exact.
  return (k, v, jnp.where(tail, 1e4, k), jnp.where(tail, jnp.nan, v))


@pytest.mark.parametrize("variant", ["gpu", "tpu"])
@pytest.mark.parametrize("lq,kv_length", [(1, 301), (9, 310), (300, 300)])
def test_cached_matches_reference(variant, lq, kv_length):
  s_max = 1000  # Not a block multiple: the last block is partial.
  k, v, k_bad, v_bad = _poisoned_cache(s_max, kv_length)
  q = _qkvw(lq)[0]
  run, fn = CACHED[variant]
  out = run(fn, q, k_bad, v_bad, jnp.int32(kv_length))
  assert out.shape == q.shape and out.dtype == q.dtype
  _assert_close(out, ref.cached_attention_reference(
      q, k[:, :, :kv_length], v[:, :, :kv_length], kv_length, scale=SCALE),
                1e-5)


@pytest.mark.parametrize("variant,config", [
    ("gpu", CachedAttentionConfig(16, 32)), ("tpu", None)])
def test_cached_one_compile_for_traced_lengths(variant, config):
  q = _qkvw(4, jnp.bfloat16)[0]
  run, fn = CACHED[variant]
  traces = []

  @jax.jit
  def step(q, k, v, n):
    traces.append(1)
    return run(fn, q, k, v, n, config=config)

  for kv_length in (5, 230):
    cache = _poisoned_cache(256, kv_length, seed=kv_length)
    k, v, k_bad, v_bad = (x.astype(jnp.bfloat16) for x in cache)
    _assert_close(step(q, k_bad, v_bad, jnp.int32(kv_length)),
                  ref.cached_attention_reference(q, k, v, kv_length,
                                                 scale=SCALE), 2e-2)
  assert len(traces) == 1


def test_auto_resolves_to_xla_on_cpu():
  choice = ops._attention_auto_choice  # pylint: disable=protected-access
  assert choice("cpu") == "xla" and choice("tpu") == "xla"
  # The H100 benchmark recorded in ops._attention_auto_choice.
  assert choice("gpu") == "pallas"
  lev = LEVELS["tiny37"]
  q, k, v, _ = _qkvw(37)
  np.testing.assert_array_equal(
      ops.block_causal_attention(q, k, v, lev, lev, scale=SCALE),
      ref.block_causal_attention_reference(q, k, v, lev, lev, scale=SCALE))
  np.testing.assert_array_equal(
      ops.cached_attention(q, k, v, 20, scale=SCALE),
      ref.cached_attention_reference(q, k, v, 20, scale=SCALE))


def test_pallas_on_cpu_interprets_the_gpu_kernel():
  lev = LEVELS["tiny37"]
  q, k, v, _ = _qkvw(37)
  out = ops.block_causal_attention(q, k, v, lev, lev, scale=SCALE,
                                   implementation="pallas", config=GPU_SMALL)
  _assert_close(out, ref.block_causal_attention_reference(
      q, k, v, lev, lev, scale=SCALE), 1e-5)


def test_bad_inputs_raise_value_error():
  lev = LEVELS["tiny37"]
  q, k, v, _ = _qkvw(37)
  bca, ca = ops.block_causal_attention, ops.cached_attention
  cases = [
      (lambda: bca(q, k, v, lev, lev, scale=SCALE, implementation="cuda"),
       "unknown implementation"),
      (lambda: ca(q, k, v, 3, scale=SCALE, implementation="Pallas"),
       "unknown implementation"),
      (lambda: bca(q[0], k, v, lev, lev, scale=SCALE), r"\[B, H, S, D\]"),
      (lambda: bca(q, k[..., :32], v, lev, lev, scale=SCALE), "equal shapes"),
      (lambda: bca(q, k, v.astype(jnp.bfloat16), lev, lev, scale=SCALE),
       "dtype"),
      (lambda: bca(q, k, v, lev[:-1], lev, scale=SCALE), "q_levels"),
      (lambda: bca(q, k, v, lev, lev.astype(jnp.float32), scale=SCALE),
       "kv_levels"),
      (lambda: ca(q, k, v, jnp.array([3]), scale=SCALE), "kv_length"),
      (lambda: bca(q, k, v, lev, lev, scale=float("nan"),
                   implementation="pallas"), "scale"),
      (lambda: bca(q, k, v, lev, lev, scale=SCALE, implementation="pallas",
                   config=BlockCausalAttentionConfig(48, 16, 16, 16)),
       "powers of two"),
      (lambda: attention.block_causal_attention_pallas_tpu(
          q, k, v, lev, lev, scale=SCALE,
          config=BlockCausalAttentionConfig(128, 64, 128, 128)),
       "multiples of 128"),
  ]
  for fn, match in cases:
    with pytest.raises(ValueError, match=match):
      fn()
