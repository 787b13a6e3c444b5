"""Gradients of the hybrid quantizer's training forward (analytic checks)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hart_jax.interop import official_tokenizer as ot
from hart_jax.models.tokenizer import MultiScaleQuantizer
from hart_jax.models.tokenizer import config as tok_config

CONFIG = tok_config.TokenizerConfig(ch=32, ch_mult=(1, 1, 1), vocab_size=64,
                                    v_patch_nums=(1, 2, 4))


@pytest.fixture(scope="module")
def quantizer_vars():
  variables = ot.init_variables(CONFIG, jax.random.key(3))["vae"]
  return {"params": variables["params"]["quantize"],
          "buffers": variables["buffers"]["quantize"]}


def _forward(variables, f, p_skip, method="train_forward"):
  q = MultiScaleQuantizer(CONFIG)
  return q.apply(variables, f, jax.random.key(0), p_skip,
                 method=getattr(MultiScaleQuantizer, method))


def test_straight_through_gradient_is_identity(quantizer_vars):
  f = jax.random.normal(jax.random.key(1), (2, 4, 4, 32))
  w = jax.random.normal(jax.random.key(2), f.shape)
  for p_skip in (0.0, 1.0):
    grad = jax.grad(lambda f: jnp.sum(
        _forward(quantizer_vars, f, p_skip)["fhat"] * w))(f)
    np.testing.assert_allclose(grad, w, rtol=1e-6, atol=1e-6)


def test_commitment_gradient_matches_analytic(quantizer_vars):
  """d vq_loss / d f = sum_k 2 beta (f - fhat_k) / (N K): only the beta term
  reaches f; the codebook term sees a stopped f."""
  f = jax.random.normal(jax.random.key(1), (2, 4, 4, 32))
  grad = jax.grad(lambda f: _forward(quantizer_vars, f, 0.0)["vq_loss"])(f)

  q = MultiScaleQuantizer(CONFIG)

  def partial_sums(m, f):
    rest, fhat, sums = f, jnp.zeros_like(f), []
    for si, pn in enumerate(CONFIG.v_patch_nums):
      from hart_jax.ops.resample import area_resize, bicubic_resize  # pylint: disable=g-import-not-at-top
      _, cw = m.lookup(area_resize(rest, pn))
      h = m.phi(bicubic_resize(cw, 4), si, 3)
      fhat, rest = fhat + h, rest - h
      sums.append(fhat)
    return sums

  sums = q.apply(quantizer_vars, f, method=partial_sums)
  n, k = f.size, len(sums)
  want = sum(2 * CONFIG.beta * (f - s) / (n * k) for s in sums)
  np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-9)


def test_codebook_gets_gradient_through_lookup(quantizer_vars):
  f = jax.random.normal(jax.random.key(1), (2, 4, 4, 32))
  grads = jax.grad(lambda v: _forward(v, f, 0.0)["vq_loss"])(quantizer_vars)
  g_code = grads["params"]["embedding"]
  out = _forward(quantizer_vars, f, 0.0)
  used = np.unique(np.concatenate([np.asarray(i).ravel()
                                   for i in out["indices"]]))
  rows_with_grad = np.nonzero(np.abs(np.asarray(g_code)).sum(1))[0]
  # Exactly the codewords that were picked receive gradient.
  np.testing.assert_array_equal(rows_with_grad, used)
  assert float(jnp.abs(grads["params"]["phi_0"]["kernel"]).sum()) > 0


def test_continuous_draw_follows_probability(quantizer_vars):
  f = jax.random.normal(jax.random.key(1), (1, 4, 4, 32))
  q = MultiScaleQuantizer(CONFIG)
  draw = jax.jit(lambda key: q.apply(quantizer_vars, f, key, 0.3,
                                     method=MultiScaleQuantizer.train_forward
                                     )["used_continuous"])
  keys = jax.random.split(jax.random.key(5), 400)
  share = float(np.mean([bool(draw(k)) for k in keys[:200]]))
  assert 0.6 < share < 0.8  # P(continuous) = 0.7; 200 draws, +-4.5 sigma
  full = q.apply(quantizer_vars, f, None, 1.0,
                 method=MultiScaleQuantizer.train_forward)
  np.testing.assert_allclose(full["fhat"], f, atol=1e-5)  # rng None: f_hat=f
