"""Tests of the pallas_kernels package."""
