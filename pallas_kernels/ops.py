"""Public entry points of pallas_kernels, with backend dispatch."""

import jax

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
