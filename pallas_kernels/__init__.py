"""Pallas kernels for hart_jax, each with a pure-jnp reference."""

from pallas_kernels.ops import vq_lookup
from pallas_kernels.reference import vq_lookup_reference
from pallas_kernels.vq_lookup import VQLookupConfig
