"""Diffusion processes of HART's residual head (pure numpy / JAX)."""
