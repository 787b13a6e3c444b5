"""hart_jax: HART (Hybrid Autoregressive Transformer) in JAX/Flax.

  from hart_jax import HartPipeline
  images = HartPipeline.load("out/demo")(class_ids=[3], seed=0)
"""

__version__ = "0.1.0"


def __getattr__(name):
  # Lazy: `import hart_jax` stays cheap (no jax import) for entry points
  # that fail fast on a bad flag.
  if name == "HartPipeline":
    from hart_jax.pipeline import HartPipeline  # pylint: disable=g-import-not-at-top
    return HartPipeline
  raise AttributeError(f"module 'hart_jax' has no attribute {name!r}")
