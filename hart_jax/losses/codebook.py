"""Codebook health: usage metrics and dead-code restart.

`MultiScaleQuantizer.train_forward` returns per-scale hit counts
`hits` [K, V]. Perplexity (exp of the entropy of the code distribution) is
V when every code is used equally and 1 when one code takes every hit.

Dead-code restart (as in VQ-VAE-2 / Jukebox-style "codebook reset"): codes
whose EMA hit count fell below a threshold are moved onto recent encoder
latents, so they land where the data is and start winning lookups again.
Everything here has fixed shapes and takes explicit keys, so it runs
inside a jitted train step; a typical step does

  ema = update_hit_ema(ema, out["hits"].sum(0))
  pool, ptr = update_latent_pool(pool, ptr, latents.reshape(-1, C))
  # every N steps (e.g. under lax.cond or in a second jitted function):
  codebook, n = restart_dead_codes(key, codebook, ema, pool, threshold)
  ema = reset_hit_ema(ema, threshold)

Note that HART's default `freeze_codebook_for_hybrid` trains no codebook;
this matters when the codebook itself is trained. Adam moments of restarted
rows are stale; resetting them is the optimizer's business.
"""

import jax
import jax.numpy as jnp


def _perplexity(counts: jax.Array, axis: int = -1) -> jax.Array:
  total = jnp.sum(counts, axis=axis, keepdims=True)
  # An empty row has no distribution; max(total, 1) makes it 1 (not NaN).
  p = counts / jnp.maximum(total, 1.0)
  return jnp.exp(jnp.sum(jax.scipy.special.entr(p), axis=axis))


def codebook_usage(hits: jax.Array) -> dict[str, jax.Array]:
  """Usage metrics from per-scale hit counts.

  Args:
    hits: [K, V] hit counts (any non-negative numbers), or [V].

  Returns:
    dict with float32 arrays:
      perplexity: [K] per-scale perplexity, in [1, V].
      used_fraction: [K] share of codes hit at least once per scale.
      perplexity_all: scalar, of the hits summed over scales.
      used_fraction_all: scalar, codes hit at least once at any scale.
  """
  hits = jnp.atleast_2d(hits).astype(jnp.float32)
  total = jnp.sum(hits, axis=0)
  return dict(
      perplexity=_perplexity(hits),
      used_fraction=jnp.mean(hits > 0, axis=-1, dtype=jnp.float32),
      perplexity_all=_perplexity(total),
      used_fraction_all=jnp.mean(total > 0, dtype=jnp.float32))


def update_hit_ema(ema: jax.Array, hits: jax.Array,
                   decay: float = 0.99) -> jax.Array:
  """ema * decay + hits * (1 - decay).

  This is the steady-state update of VAR/HART's `ema_vocab_hit_SV` buffer
  (VAR warms it up with decay 0.9 for its first 100 steps).

  Args:
    ema: [V] (or [K, V], the official per-scale buffer) running counts.
    hits: counts of the current step, same shape.
    decay: EMA decay.

  Returns:
    The new EMA, float32.
  """
  return (ema * decay + hits * (1.0 - decay)).astype(jnp.float32)


def dead_code_mask(ema: jax.Array, threshold: float) -> jax.Array:
  """[V] bool: codes whose EMA hit count is below `threshold`."""
  return ema < threshold


def reset_hit_ema(ema: jax.Array, threshold: float,
                  value: float | None = None) -> jax.Array:
  """Sets the EMA of just-restarted (dead) codes to `value`.

  Without this a restarted code would still read as dead at the next
  restart and be moved again before it had a chance to be used.

  Args:
    ema: [V] EMA hit counts, as passed to `restart_dead_codes`.
    threshold: the restart threshold.
    value: new EMA of the restarted codes; default `threshold`, i.e. they
      survive until their EMA decays below it unused.

  Returns:
    The new [V] EMA.
  """
  value = threshold if value is None else value
  return jnp.where(dead_code_mask(ema, threshold), jnp.float32(value), ema)


def update_latent_pool(pool: jax.Array, ptr: jax.Array,
                       latents: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Writes latents into a ring buffer of recent encoder outputs.

  Args:
    pool: [N, C] buffer.
    ptr: int32 scalar, the next row to write.
    latents: [M, C] new latents (M <= N; stop-gradient is applied).

  Returns:
    (new pool, new ptr).
  """
  n, m = pool.shape[0], latents.shape[0]
  if m > n:
    raise ValueError(f"{m} latents do not fit a pool of {n}")
  rows = (ptr + jnp.arange(m)) % n
  pool = pool.at[rows].set(jax.lax.stop_gradient(latents).astype(pool.dtype))
  return pool, (ptr + m) % n


def restart_dead_codes(key: jax.Array, codebook: jax.Array, ema: jax.Array,
                       pool: jax.Array, threshold: float,
                       noise_std: float = 1e-3
                       ) -> tuple[jax.Array, jax.Array]:
  """Replaces dead codes by random pool latents plus small Gaussian noise.

  Pool rows are drawn without replacement when the pool has at least V
  rows, so restarted codes start distinct; the noise separates them
  anyway when a row repeats. Live rows are returned bit for bit.

  Args:
    key: PRNG key; the same key gives the same result.
    codebook: [V, C].
    ema: [V] EMA of hit counts (e.g. `update_hit_ema` of hits.sum(0)).
    pool: [N, C] recent encoder latents (`update_latent_pool`).
    threshold: codes with ema < threshold are dead.
    noise_std: standard deviation of the added noise.

  Returns:
    (new codebook [V, C], number of restarted codes as int32 scalar).
  """
  v, n = codebook.shape[0], pool.shape[0]
  pick_key, noise_key = jax.random.split(key)
  rows = jax.random.choice(pick_key, n, (v,), replace=n < v)
  noise = noise_std * jax.random.normal(noise_key, codebook.shape,
                                        jnp.float32)
  fresh = (pool[rows].astype(jnp.float32) + noise).astype(codebook.dtype)
  dead = dead_code_mask(ema, threshold)
  new = jnp.where(dead[:, None], fresh, codebook)
  return new, jnp.sum(dead, dtype=jnp.int32)
