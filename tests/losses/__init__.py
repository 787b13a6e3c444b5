"""Tests of hart_jax.losses."""
