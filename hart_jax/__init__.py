"""hart_jax: HART (Hybrid Autoregressive Transformer) in JAX/Flax."""

__version__ = "0.1.0"
