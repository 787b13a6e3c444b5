"""GAN losses, disc start, and the adaptive weight vs torch.autograd."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from hart_jax.losses import gan
from hart_jax.models.tokenizer import PatchDiscriminator
from tests.losses import helpers

REAL = np.array([2.0, -0.5, 0.3], np.float32)
FAKE = np.array([-2.0, 0.5, -0.7], np.float32)


def test_hinge_losses_hand_computed():
  # relu(1 - real) = [0, 1.5, 0.7], relu(1 + fake) = [0, 1.5, 0.3].
  np.testing.assert_allclose(gan.hinge_discriminator_loss(REAL, FAKE),
                             0.5 * (2.2 / 3 + 1.8 / 3), rtol=1e-6)
  np.testing.assert_allclose(gan.generator_loss(FAKE), 2.2 / 3, rtol=1e-6)
  # Confident, correct discriminator: no loss; bf16 logits give fp32.
  out = gan.hinge_discriminator_loss(jnp.full((4,), 3.0, jnp.bfloat16),
                                     jnp.full((4,), -1.0, jnp.bfloat16))
  assert out.dtype == jnp.float32 and out == 0.0


def test_disc_start_factor_under_jit():
  f = jax.jit(lambda s: gan.disc_start_factor(s, 10, 0.7))
  assert f(9) == 0.0 and f(10) == np.float32(0.7) and f(11) == np.float32(0.7)
  assert gan.disc_start_factor(0, 0) == 1.0


class Toy(nn.Module):
  """A two-layer "decoder"; `last` plays conv_out."""

  @nn.compact
  def __call__(self, z):
    h = jnp.tanh(nn.Dense(16, name="hidden")(z))
    return nn.Dense(12, name="last")(h)


KERNEL = ("last", "kernel")


@pytest.fixture(scope="module")
def toy():
  z = jax.random.normal(jax.random.key(0), (4, 8))
  target = jax.random.normal(jax.random.key(1), (4, 12))
  params = Toy().init(jax.random.key(2), z)["params"]
  w_disc = jax.random.normal(jax.random.key(3), (12,))
  return params, z, target, w_disc


def _rec(target, out):
  return jnp.mean(jnp.abs(target - out)) + 0.3 * jnp.mean((target - out) ** 2)


def _gan(w_disc, out):
  return gan.generator_loss(jnp.tanh(out) @ w_disc)


def _torch_adaptive_weight(params, z, target, w_disc, disc_weight):
  """taming's calculate_adaptive_weight, on the same toy in torch."""
  t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float64)
  hidden, last = torch.nn.Linear(8, 16).double(), torch.nn.Linear(16, 12)
  last = last.double()
  with torch.no_grad():
    for mod, name in ((hidden, "hidden"), (last, "last")):
      mod.weight.copy_(t(params[name]["kernel"]).T)
      mod.bias.copy_(t(params[name]["bias"]))
  out = last(torch.tanh(hidden(t(z))))
  tgt = t(target)
  nll = (out - tgt).abs().mean() + 0.3 * ((out - tgt) ** 2).mean()
  g_loss = -torch.mean(torch.tanh(out) @ t(w_disc))
  nll_grads = torch.autograd.grad(nll, last.weight, retain_graph=True)[0]
  g_grads = torch.autograd.grad(g_loss, last.weight, retain_graph=True)[0]
  d = torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4)
  d = torch.clamp(d, 0.0, 1e4).detach()
  return float(d * disc_weight)


def _decode(params, z):
  return lambda w: Toy().apply(
      {"params": gan.replace_leaf(params, KERNEL, w)}, z)


def test_adaptive_weight_matches_torch_autograd(toy):
  params, z, target, w_disc = toy
  want = _torch_adaptive_weight(params, z, target, w_disc, 0.8)
  w = gan.get_leaf(params, KERNEL)
  decode = _decode(params, z)
  rec_of_w = lambda w: _rec(target, decode(w))
  gan_of_w = lambda w: _gan(w_disc, decode(w))

  from_grads = gan.adaptive_weight(jax.grad(rec_of_w)(w),
                                   jax.grad(gan_of_w)(w), 0.8)
  from_fns = jax.jit(lambda w: gan.adaptive_weight_from_fns(
      rec_of_w, gan_of_w, w, 0.8))(w)
  recon, one_pass = jax.jit(lambda w: gan.decode_with_adaptive_weight(
      decode, w, lambda img: _rec(target, img),
      lambda img: _gan(w_disc, img), 0.8))(w)
  for got in (from_grads, from_fns, one_pass):
    np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(recon, decode(w), rtol=1e-5, atol=1e-6)


def test_decode_with_adaptive_weight_keeps_training_gradients(toy):
  """The returned image trains every param as a plain forward would, and
  the weight itself contributes no gradient."""
  params, z, target, w_disc = toy

  def loss(p, use_helper):
    decode = _decode(p, z)
    if not use_helper:
      return _rec(target, decode(gan.get_leaf(p, KERNEL))), 0.0
    recon, d = gan.decode_with_adaptive_weight(
        decode, gan.get_leaf(p, KERNEL), lambda i: _rec(target, i),
        lambda i: _gan(w_disc, i))
    return _rec(target, recon), d

  plain = jax.grad(lambda p: loss(p, False)[0])(params)
  helper = jax.jit(jax.grad(lambda p: loss(p, True)[0]))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7),
               plain, helper)
  zero = jax.grad(lambda p: loss(p, True)[1])(params)
  assert all(np.all(g == 0) for g in jax.tree.leaves(zero))


def test_adaptive_weight_clips_and_stops_gradient():
  g = jnp.ones((3, 3))
  # A vanishing GAN gradient would blow the weight up: clipped at 1e4.
  np.testing.assert_allclose(gan.adaptive_weight(g, jnp.zeros_like(g), 0.5),
                             0.5e4)
  np.testing.assert_allclose(gan.adaptive_weight(3 * g, g, 2.0),
                             2.0 * 9.0 / (3.0 + 1e-4), rtol=1e-6)
  grad = jax.grad(lambda s: gan.adaptive_weight(s * g, g))(2.0)
  assert grad == 0.0
  tree = {"a": g, "b": 2 * g}  # pytree grads: one global norm
  np.testing.assert_allclose(gan.adaptive_weight(tree, tree), 1.0, rtol=1e-4)


def test_replace_leaf_copies_only_the_path():
  tree = {"a": {"b": 1, "c": 2}, "d": {"e": 3}}
  out = gan.replace_leaf(tree, ("a", "b"), 9)
  assert out == {"a": {"b": 9, "c": 2}, "d": {"e": 3}}
  assert tree["a"]["b"] == 1 and out["d"] is tree["d"]


def test_with_official_patch_discriminator():
  """The losses on PatchDiscriminator logits, in a jitted step."""
  disc = PatchDiscriminator(ndf=8)
  real = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3), minval=-1.0)
  fake = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), minval=-1.0)
  variables = helpers.numpy_init(disc, 2, real)

  @jax.jit
  def step(variables, real, fake):
    def d_loss(params):
      logits, upd = disc.apply(
          {"params": params, "batch_stats": variables["batch_stats"]},
          jnp.concatenate([real, jax.lax.stop_gradient(fake)]), train=True,
          mutable=["batch_stats"])
      lr, lf = jnp.split(logits, 2)
      return gan.hinge_discriminator_loss(lr, lf), (upd, lf)
    (loss, (upd, lf)), grads = jax.value_and_grad(d_loss, has_aux=True)(
        variables["params"])
    return loss, gan.generator_loss(lf), grads, upd

  loss, g_loss, grads, upd = step(variables, real, fake)
  assert np.isfinite(loss) and np.isfinite(g_loss) and loss >= 0
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert int(upd["batch_stats"]["main_3"]["num_batches_tracked"]) == 1
