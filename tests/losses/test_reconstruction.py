"""Pixel losses and the combined tokenizer loss."""

import jax
import jax.numpy as jnp
import numpy as np

from hart_jax.losses import reconstruction as rl

X = jnp.zeros((2, 2, 2, 3))
Y = jnp.full((2, 2, 2, 3), 0.5).at[0].set(-1.0)  # |d| is 1 or 0.5


def test_l1_l2_hand_computed():
  np.testing.assert_allclose(rl.l1_loss(X, Y), 0.75)
  np.testing.assert_allclose(rl.l2_loss(X, Y), (1.0 + 0.25) / 2)
  assert rl.l1_loss(X.astype(jnp.bfloat16), Y).dtype == jnp.float32


def test_tokenizer_loss_combines_pieces():
  w = rl.LossWeights(l1=1.0, l2=2.0, perceptual=0.5, vq=3.0)
  total, m = jax.jit(rl.tokenizer_loss, static_argnames="weights")(
      X, Y, vq_loss=jnp.float32(0.1), perceptual=jnp.array([0.2, 0.4]),
      g_loss=jnp.float32(-0.3), adaptive_weight=jnp.float32(2.0),
      disc_factor=jnp.float32(1.0), weights=w)
  rec = 0.75 + 2.0 * 0.625 + 0.5 * 0.3
  np.testing.assert_allclose(m["rec"], rec, rtol=1e-6)
  np.testing.assert_allclose(total, rec + 3.0 * 0.1 + 2.0 * -0.3, rtol=1e-6)
  assert set(m) == {"l1", "l2", "perceptual", "rec", "vq", "g_loss",
                    "adaptive_weight", "disc_factor", "total"}
  assert all(v.dtype == jnp.float32 for v in m.values())


def test_before_disc_start_the_gan_term_vanishes():
  w = rl.LossWeights()
  total, _ = rl.tokenizer_loss(X, Y, vq_loss=0.0, perceptual=0.0,
                               g_loss=5.0, adaptive_weight=3.0,
                               disc_factor=0.0, weights=w)
  np.testing.assert_allclose(total, 0.75)


def test_gradient_flows_to_recon_only_through_rec_terms():
  w = rl.LossWeights(l1=0.0, l2=1.0, perceptual=0.0)
  grad = jax.grad(lambda r: rl.tokenizer_loss(
      X, r, vq_loss=0.0, perceptual=0.0, g_loss=0.0, adaptive_weight=0.0,
      disc_factor=1.0, weights=w)[0])(Y)
  np.testing.assert_allclose(grad, 2 * (Y - X) / X.size, rtol=1e-6)
