"""The XLA attention path slices long query blocks without changing results."""

import jax
import numpy as np

from hart_jax.models.hart import layers


def test_query_chunking_is_exact(monkeypatch):
  keys = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(keys[0], (2, 2, 300, 16))
  k = jax.random.normal(keys[1], (2, 2, 400, 16))
  v = jax.random.normal(keys[2], (2, 2, 400, 16))
  full = layers.attention(q, k, v, 0.1, None, "xla")
  monkeypatch.setattr(layers, "_query_chunk", lambda *a, **kw: 32)
  np.testing.assert_array_equal(layers.attention(q, k, v, 0.1, None, "xla"),
                                full)


def test_chunk_size_respects_the_budget():
  # Batch 16 x 24 heads x 9750 keys: the 1024px sampler's last scale.
  rows_keys = 16 * 24 * 9750
  chunk = layers._query_chunk(rows_keys, 4096)  # pylint: disable=protected-access
  assert chunk * rows_keys * 4 <= 2 ** 30 and chunk >= 16
  assert layers._query_chunk(10, 64) == 64  # pylint: disable=protected-access
