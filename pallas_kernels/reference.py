"""Pure-jnp reference for the VQ codebook (nearest-codeword) lookup.

This is the spec the Pallas kernels are tested against. It mirrors the
official HART/VAR torch code:

  d = sum(z**2, 1, keepdim=True) + sum(e**2, 1) - 2 * z @ e.T
  idx = argmin(d, 1)

computed in float32, with ties going to the lowest index (torch.argmin and
jnp.argmin agree on that).
"""

import jax
import jax.numpy as jnp


def row_sq_norms(x: jax.Array) -> jax.Array:
  """Returns sum(x**2, axis=1) in float32.

  Shared with the kernels' wrappers so the norm terms of the distance are
  bit-identical to the reference; only the dot product is computed in-kernel.

  Args:
    x: [M, D] array of any float dtype.
  """
  x = x.astype(jnp.float32)
  return jnp.sum(x * x, axis=1)


def nt_dot(a: jax.Array, b: jax.Array) -> jax.Array:
  """Returns a @ b.T in full float32 precision.

  HIGHEST matters: the default f32 matmul precision is one bf16 pass on TPU
  and TF32 on recent NVIDIA GPUs, while torch (allow_tf32=False by default)
  computes this product in true float32.
  """
  return jax.lax.dot_general(
      a, b, (((1,), (1,)), ((), ())),
      precision=jax.lax.Precision.HIGHEST,
      preferred_element_type=jnp.float32)


def vq_lookup_reference(
    z: jax.Array, codebook: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Nearest-codeword lookup with the full [N, V] distance matrix.

  Args:
    z: [N, D] float array of vectors to quantize.
    codebook: [V, D] float array of codewords.

  Returns:
    (indices, quantized): int32 [N] argmin indices and the [N, D] rows
    codebook[indices] in the codebook's dtype.
  """
  z32 = z.astype(jnp.float32)
  e32 = codebook.astype(jnp.float32)
  # Same association order as torch: (|z|^2 + |e|^2) - 2 z.e
  d = (row_sq_norms(z32)[:, None] + row_sq_norms(e32)[None, :]
       - 2.0 * nt_dot(z32, e32))
  indices = jnp.argmin(d, axis=1).astype(jnp.int32)
  return indices, codebook[indices]
