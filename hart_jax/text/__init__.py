"""Text encoders for text-to-image training (hart_jax.text.encoders)."""
