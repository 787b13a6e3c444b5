"""HART training forward: subsampling, dropout quirk, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import hart_tiny
from hart_jax.interop import official_transformer as otr
from hart_jax.models.hart import training
from hart_jax.models.hart.config import from_config_dict
from hart_jax.models.hart.transformer import HartTransformer

CONFIG = from_config_dict(hart_tiny.get_config().model)


def test_num_kept_distribution_at_1024():
  rng = np.random.default_rng(0)
  kept = np.array([training.draw_num_kept(rng, 4096) for _ in range(4000)])
  assert kept.min() >= 32 and kept.max() <= 2048
  # Official mean 738.7 kept tokens (hart_spec.md 2.8).
  assert abs(kept.mean() - 738.7) < 25
  bucketed = training.draw_num_kept(np.random.default_rng(1), 4096, 256)
  assert bucketed % 256 == 0
  assert training.draw_num_kept(rng, 16) == 16  # never fewer than 32


def test_sample_keep_is_sorted_unique():
  keep = training.sample_keep(jax.random.key(0), 3, 36, 20)
  assert keep.shape == (3, 20)
  for row in np.asarray(keep):
    assert np.all(np.diff(row) > 0) and row.max() < 36
  assert not np.array_equal(keep[0], keep[1])


@pytest.mark.parametrize("mode,rate,expected", [
    ("normal", 0.1, 0.5398), ("uniform", 0.1, 0.1)])
def test_condition_dropout_modes(mode, rate, expected):
  config = CONFIG.replace(cond_drop_mode=mode, cond_drop_rate=rate)
  ctx = jnp.ones((20000, 1, 1))
  out, dropped = training.drop_condition(jax.random.key(0), ctx, config)
  assert abs(float(dropped.mean()) - expected) < 0.015
  np.testing.assert_array_equal(out[:, 0, 0], np.where(dropped, 0.0, 1.0))


def test_losses_are_finite_and_differentiable():
  params = otr.init_params(CONFIG, jax.random.key(0))
  model = HartTransformer(CONFIG)
  b = 2
  rng = np.random.default_rng(0)
  batch = dict(
      context=jnp.asarray(rng.normal(size=(b, 8, 32)), jnp.float32),
      context_mask=jnp.ones((b, 8), bool),
      context_position_ids=jnp.tile(jnp.arange(8), (b, 1)),
      var_input=jnp.asarray(rng.normal(size=(b, 29, 32)), jnp.float32),
      indices=[jnp.asarray(rng.integers(0, 1024, (b, pn * pn)))
               for pn in CONFIG.patch_nums],
      frest_before_last=jnp.asarray(rng.normal(size=(b, 16, 32)),
                                    jnp.float32))
  codebook = jnp.asarray(rng.normal(size=(1024, 32)), jnp.float32)
  keep = training.sample_keep(jax.random.key(1), b, 16, 10)
  grad_fn = jax.jit(jax.grad(lambda p: training.hart_losses(
      model, p, batch, codebook, jax.random.key(2), keep=keep)[0]))
  grads = grad_fn(params)
  leaves = jax.tree.leaves(grads)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  # Both losses reach their parameters: the head via CE, the diffusion MLP
  # via the diffusion loss (its output layer: the rest starts zero-gated,
  # as in the official init).
  assert float(jnp.abs(grads["head"]["kernel"]).sum()) > 0
  assert float(jnp.abs(grads["diffloss"]["net"]["final_layer"]["linear"][
      "kernel"]).sum()) > 0
  _, m = training.hart_losses(model, params, batch, codebook,
                              jax.random.key(2), keep=keep)
  assert m["logits"].shape == (b, 1 + 4 + 9 + 10, 1024)
  assert set(f"acc_scale{k}" for k in range(4)) <= set(m)


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_gives_the_same_gradients(policy):
  rng = np.random.default_rng(0)
  batch = dict(
      context=jnp.asarray(rng.normal(size=(2, 8, 32)), jnp.float32),
      context_mask=jnp.ones((2, 8), bool),
      context_position_ids=jnp.tile(jnp.arange(8), (2, 1)),
      var_input=jnp.asarray(rng.normal(size=(2, 29, 32)), jnp.float32))
  params = otr.init_params(CONFIG, jax.random.key(0))

  def grads(config):
    model = HartTransformer(config)
    return jax.grad(lambda p: jnp.sum(model.apply(
        {"params": p}, batch["context"], batch["context_mask"],
        batch["context_position_ids"], batch["var_input"])["logits"] ** 2
                                      ) * 1e-3)(params)

  plain, remat = grads(CONFIG), grads(CONFIG.replace(remat=policy))
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
