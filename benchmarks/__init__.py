"""Benchmarks for hart_jax (run as modules: python -m benchmarks.NAME)."""
