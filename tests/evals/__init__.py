"""Tests of hart_jax.evals: FID, CLIP score, reconstruction metrics."""
