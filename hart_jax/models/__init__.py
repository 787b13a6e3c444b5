"""Flax (linen) models of HART."""
