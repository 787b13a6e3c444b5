"""Public entry points of pallas_kernels, with backend dispatch."""

import jax

from pallas_kernels import attention
from pallas_kernels import attention_reference
from pallas_kernels import reference
# Imported by name: after `import pallas_kernels` the package attribute
# `vq_lookup` is this module's function, which shadows the kernel module.
from pallas_kernels.vq_lookup import check_shapes
from pallas_kernels.vq_lookup import vq_lookup_pallas_gpu
from pallas_kernels.vq_lookup import vq_lookup_pallas_tpu

IMPLEMENTATIONS = ("auto", "xla", "pallas")


def _auto_choice(backend: str) -> str:
  """The implementation that "auto" picks on `backend`.

  Project rule: a kernel becomes the auto default only where a benchmark
  (python -m pallas_kernels.benchmark_vq_lookup) shows it beats XLA. No such
  result is recorded yet, so this is "xla" everywhere; change it only together
  with the benchmark numbers that justify it.
  """
  del backend  # Same answer on every backend until a benchmark says otherwise.
  return "xla"


def vq_lookup(z, codebook, *, implementation="auto", config=None,
              interpret=None):
  """Nearest-codeword lookup: argmin_v |z[n] - codebook[v]|^2.

  Distances are computed in float32 as |z|^2 + |e|^2 - 2 z.e (as in the
  official torch code) and ties go to the lowest index.

  Args:
    z: [N, D] float array.
    codebook: [V, D] float array.
    implementation: "xla" (the jnp reference), "pallas" (the kernel for the
      current backend: TPU kernel on TPU, Triton kernel on GPU, the Triton
      kernel interpreted on CPU) or "auto" (see _auto_choice).
    config: optional vq_lookup.VQLookupConfig for the pallas kernels.
    interpret: for "pallas"; None means interpret on CPU only.

  Returns:
    (indices, quantized): int32 [N] and codebook[indices] ([N, D], the
    codebook's dtype).

  Raises:
    ValueError: on an unknown implementation or malformed shapes.
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(
        f"vq_lookup: unknown implementation {implementation!r}; expected one "
        f"of {IMPLEMENTATIONS}")
  check_shapes(z, codebook)
  backend = jax.default_backend()
  if implementation == "auto":
    implementation = _auto_choice(backend)
  if implementation == "xla":
    return reference.vq_lookup_reference(z, codebook)
  if backend == "tpu":
    return vq_lookup_pallas_tpu(
        z, codebook, config=config, interpret=interpret)
  return vq_lookup_pallas_gpu(
      z, codebook, config=config, interpret=interpret)


def _attention_auto_choice(backend: str) -> str:
  """The implementation that "auto" picks for the attention ops on `backend`.

  Same rule as _auto_choice: "pallas" only where
  python -m pallas_kernels.benchmark_attention shows it beats XLA. Recorded
  on one H100 (jax 0.11.2), B=8, H=24, D=64, bf16, pallas/xla time:
    S=979:  fwd 0.38 vs 2.18 ms, fwd+bwd 0.94 vs 4.86 ms,
            cached L_q=256 0.21 vs 3.3 ms, L_q=4 0.15 vs 0.23 ms;
    S=2539: fwd 1.28 vs 13.0 ms, fwd+bwd 3.45 vs 30.0 ms,
            cached L_q=1024 0.68 vs 5.26 ms, L_q=4 0.17 vs 0.30 ms;
    S=9750: fwd 12.4 ms, fwd+bwd 39.4 ms (xla runs out of memory),
            cached L_q=4096 8.0 vs 71.2 ms, L_q=4 0.34 vs 0.90 ms.
  So "pallas" on GPU. TPU: not measured yet (no TPU available), so "xla".
  """
  return "pallas" if backend == "gpu" else "xla"


def _resolve_attention_implementation(op: str, implementation: str) -> str:
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(
        f"{op}: unknown implementation {implementation!r}; expected one of "
        f"{IMPLEMENTATIONS}")
  if implementation == "auto":
    return _attention_auto_choice(jax.default_backend())
  return implementation


def block_causal_attention(q, k, v, q_levels, kv_levels, *, scale,
                           implementation="auto", config=None,
                           interpret=None):
  """HART's training attention, block-causal over scales; differentiable.

  Query i attends key j iff kv_levels[j] <= q_levels[i] (level 0 = text
  prefix, level k = the k-th scale): causal across scales, bidirectional
  inside one. softmax(scale * q k^T) is computed in float32. Sequence
  lengths need not be block multiples.

  Args:
    q: [B, H, S_q, D]; k, v: [B, H, S_k, D], one float dtype.
    q_levels: int [S_q]; kv_levels: int [S_k] (HART: non-decreasing; other
      orders are exact too but skip fewer blocks).
    scale: softmax scale, a Python float (HART: 0.25 / sqrt(D)).
    implementation: "xla" (the jnp reference, which materialises the
      [S_q, S_k] mask and logits), "pallas" (flash-attention kernels with a
      Pallas backward that skip fully masked blocks: the TPU kernel on TPU,
      the Triton kernel on GPU, the Triton kernel interpreted on CPU) or
      "auto" (see _attention_auto_choice).
    config: optional attention.BlockCausalAttentionConfig (pallas only).
    interpret: for "pallas"; None means interpret on CPU only.

  Returns:
    [B, H, S_q, D] in q's dtype. A query that sees no key gets zeros.

  Raises:
    ValueError: on an unknown implementation or malformed inputs.
  """
  implementation = _resolve_attention_implementation(
      "block_causal_attention", implementation)
  attention.check_block_causal_inputs(q, k, v, q_levels, kv_levels)
  if implementation == "xla":
    return attention_reference.block_causal_attention_reference(
        q, k, v, q_levels, kv_levels, scale=scale)
  if jax.default_backend() == "tpu":
    fn = attention.block_causal_attention_pallas_tpu
  else:
    fn = attention.block_causal_attention_pallas_gpu
  return fn(q, k, v, q_levels, kv_levels, scale=scale, config=config,
            interpret=interpret)


def cached_attention(q, k_cache, v_cache, kv_length, *, scale,
                     implementation="auto", config=None, interpret=None):
  """HART's sampling attention: one scale's queries against a KV cache.

  Every query attends the first kv_length cache positions (no level mask);
  positions >= kv_length are ignored whatever they hold. Forward only.

  Args:
    q: [B, H, L_q, D].
    k_cache, v_cache: [B, H, S_max, D], q's dtype.
    kv_length: int scalar, may be traced: one compiled program serves every
      step with the same shapes.
    scale: softmax scale, a Python float.
    implementation: "xla", "pallas" or "auto", as for block_causal_attention.
    config: optional attention.CachedAttentionConfig (pallas only).
    interpret: for "pallas"; None means interpret on CPU only.

  Returns:
    [B, H, L_q, D] in q's dtype.

  Raises:
    ValueError: on an unknown implementation or malformed inputs.
  """
  implementation = _resolve_attention_implementation(
      "cached_attention", implementation)
  attention.check_cached_inputs(q, k_cache, v_cache, kv_length)
  if implementation == "xla":
    return attention_reference.cached_attention_reference(
        q, k_cache, v_cache, kv_length, scale=scale)
  if jax.default_backend() == "tpu":
    fn = attention.cached_attention_pallas_tpu
  else:
    fn = attention.cached_attention_pallas_gpu
  return fn(q, k_cache, v_cache, kv_length, scale=scale, config=config,
            interpret=interpret)
