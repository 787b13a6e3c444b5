"""HART's scalable-resolution AR transformer (+ residual diffusion head)."""
