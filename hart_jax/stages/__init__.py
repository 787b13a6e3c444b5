"""Training stages: each builds its state, step and sample grid for the
shared loop in hart_jax.trainer."""
