"""Codebook usage metrics and dead-code restart."""

import jax
import jax.numpy as jnp
import numpy as np

from hart_jax.losses import codebook as cb

V, C = 16, 4


def test_perplexity_uniform_is_v_and_one_hot_is_one():
  uniform = jnp.full((3, V), 5.0)
  one_hot = jnp.zeros((3, V)).at[:, 7].set(17.0)
  u, o = cb.codebook_usage(uniform), cb.codebook_usage(one_hot)
  np.testing.assert_allclose(u["perplexity"], [V] * 3, rtol=1e-5)
  np.testing.assert_allclose(u["perplexity_all"], V, rtol=1e-5)
  np.testing.assert_allclose(u["used_fraction"], [1.0] * 3)
  np.testing.assert_allclose(o["perplexity"], [1.0] * 3, rtol=1e-6)
  np.testing.assert_allclose(o["perplexity_all"], 1.0, rtol=1e-6)
  np.testing.assert_allclose(o["used_fraction"], [1 / V] * 3)
  np.testing.assert_allclose(o["used_fraction_all"], 1 / V)


def test_mixed_scales_and_empty_scale():
  # Scale 0 uses codes {0, 1} equally, scale 1 only code 2, scale 2 nothing.
  hits = jnp.zeros((3, V)).at[0, :2].set(1.0).at[1, 2].set(2.0)
  out = jax.jit(cb.codebook_usage)(hits)
  np.testing.assert_allclose(out["perplexity"], [2.0, 1.0, 1.0], rtol=1e-6)
  np.testing.assert_allclose(out["used_fraction"], [2 / V, 1 / V, 0.0])
  # Overall p = [1/4, 1/4, 1/2]: entropy 1.5 ln 2, perplexity 2^1.5.
  np.testing.assert_allclose(out["perplexity_all"], 2 ** 1.5, rtol=1e-6)
  np.testing.assert_allclose(out["used_fraction_all"], 3 / V)
  single = cb.codebook_usage(jnp.ones((V,)))  # [V] is one scale
  np.testing.assert_allclose(single["perplexity"], [V], rtol=1e-5)


def _setup():
  codebook = jax.random.normal(jax.random.key(0), (V, C))
  ema = jnp.linspace(0.0, 3.0, V)  # codes 0..4 (0.0 .. 0.8) are below 1.0
  pool = 100.0 + jnp.arange(32 * C, dtype=jnp.float32).reshape(32, C)
  return codebook, ema, pool


def test_restart_replaces_exactly_the_dead_rows():
  codebook, ema, pool = _setup()
  restart = jax.jit(cb.restart_dead_codes, static_argnames="noise_std")
  new, n = restart(jax.random.key(5), codebook, ema, pool, 1.0,
                   noise_std=1e-3)
  dead = np.asarray(ema) < 1.0
  assert int(n) == dead.sum() == 5
  new, codebook, pool = map(np.asarray, (new, codebook, pool))
  # Live rows: bit for bit.
  assert new[~dead].tobytes() == codebook[~dead].tobytes()
  # Dead rows: a pool row plus noise; pool rows are 1 apart, noise << 1.
  dist = np.abs(new[dead][:, None, :] - pool[None]).max(-1)  # [dead, N]
  nearest = dist.argmin(1)
  assert np.all(dist.min(1) < 6e-3) and np.all(dist.min(1) > 0)
  assert len(set(nearest)) == len(nearest)  # N >= V: drawn w/o replacement


def test_restart_is_deterministic_per_key():
  codebook, ema, pool = _setup()
  a = cb.restart_dead_codes(jax.random.key(1), codebook, ema, pool, 1.0)
  b = cb.restart_dead_codes(jax.random.key(1), codebook, ema, pool, 1.0)
  c = cb.restart_dead_codes(jax.random.key(2), codebook, ema, pool, 1.0)
  assert np.asarray(a[0]).tobytes() == np.asarray(b[0]).tobytes()
  assert not np.array_equal(a[0], c[0])


def test_restart_small_pool_and_no_dead_codes():
  codebook, ema, pool = _setup()
  new, n = cb.restart_dead_codes(jax.random.key(3), codebook, ema, pool[:2],
                                 1.0)
  assert int(n) == 5 and np.all(np.asarray(new[:5]) > 99.0)
  same, n = cb.restart_dead_codes(jax.random.key(3), codebook, ema + 5.0,
                                  pool, 1.0)
  assert int(n) == 0 and np.array_equal(same, codebook)


def test_ema_and_pool_helpers():
  ema = cb.update_hit_ema(jnp.ones((V,)), jnp.zeros((V,)).at[0].set(10.0),
                          decay=0.9)
  np.testing.assert_allclose(ema[:2], [0.9 + 1.0, 0.9], rtol=1e-6)
  reset = cb.reset_hit_ema(jnp.array([0.1, 2.0]), 1.0)
  np.testing.assert_allclose(reset, [1.0, 2.0])
  pool, ptr = jnp.zeros((5, 2)), jnp.int32(3)
  pool, ptr = jax.jit(cb.update_latent_pool)(pool, ptr, jnp.ones((4, 2)))
  assert int(ptr) == 2  # wrapped: rows 3, 4, 0, 1 written
  np.testing.assert_array_equal(pool[:, 0], [1, 1, 0, 1, 1])
