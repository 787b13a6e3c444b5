"""Pallas kernels for hart_jax, each with a pure-jnp reference."""

from pallas_kernels.attention import BlockCausalAttentionConfig
from pallas_kernels.attention import CachedAttentionConfig
from pallas_kernels.attention_reference import block_causal_attention_reference
from pallas_kernels.attention_reference import cached_attention_reference
from pallas_kernels.ops import block_causal_attention
from pallas_kernels.ops import cached_attention
from pallas_kernels.ops import vq_lookup
from pallas_kernels.reference import vq_lookup_reference
from pallas_kernels.vq_lookup import VQLookupConfig
