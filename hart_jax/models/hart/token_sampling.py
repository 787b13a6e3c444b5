"""Token filtering and drawing as the official sampler does it (fp32).

`filter_top_k_top_p` reproduces the official in-place masking (the Gumbel
smoothing reads the masked logits); `draw` takes one categorical sample per
token; `gumbel_soft` is the `more_smooth` soft embedding weights.
"""

import jax
import jax.numpy as jnp


def filter_top_k_top_p(logits: jax.Array, top_k: int,
                       top_p: float) -> jax.Array:
  """Masks to -inf what the official `sample_with_top_k_top_p_` removes.

  top-k keeps every logit >= the k-th largest (ties kept). top-p drops the
  ascending-sorted tokens whose cumulative probability is <= 1 - top_p,
  never the most likely one.
  """
  logits = logits.astype(jnp.float32)
  if top_k > 0:
    k = min(top_k, logits.shape[-1])
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p > 0:
    order = jnp.argsort(logits, axis=-1)  # ascending
    sorted_logits = jnp.take_along_axis(logits, order, -1)
    cum = jnp.cumsum(jax.nn.softmax(sorted_logits, -1), -1)
    remove_sorted = (cum <= 1 - top_p).at[..., -1].set(False)
    remove = jnp.zeros_like(remove_sorted).at[
        tuple(jnp.indices(order.shape)[:-1]) + (order,)].set(remove_sorted)
    logits = jnp.where(remove, -jnp.inf, logits)
  return logits


def draw(rng: jax.Array, filtered_logits: jax.Array) -> jax.Array:
  """One index per token from softmax(filtered logits)."""
  return jax.random.categorical(rng, filtered_logits, axis=-1)


def gumbel_tau(ratio: float) -> float:
  """Official Gumbel temperature (MaskGIT-style annealing)."""
  return max(0.27 * (1 - ratio * 0.95), 0.005)


def gumbel_soft(filtered_logits: jax.Array, ratio: float,
                exponential: jax.Array) -> jax.Array:
  """softmax((logits * (1 + ratio) - log E) / tau) with E ~ Exp(1)."""
  g = -jnp.log(exponential)
  return jax.nn.softmax((filtered_logits * (1 + ratio) + g)
                        / gumbel_tau(ratio), axis=-1)
