"""A jitted generator step on the real tokenizer, wiring every loss piece.

This is the pattern documented in hart_jax/losses/gan.py; the test keeps
that recipe honest against HybridTokenizer and PatchDiscriminator.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from hart_jax.losses import codebook as cb
from hart_jax.losses import gan
from hart_jax.losses import lpips as lp
from hart_jax.losses import reconstruction as rl
from hart_jax.models.tokenizer import HybridTokenizer, PatchDiscriminator
from hart_jax.models.tokenizer import config as tok_config
from tests.losses import helpers

# 32 px: the smallest image PatchDiscriminator maps to a non-empty grid.
CONFIG = tok_config.TokenizerConfig(ch=32, ch_mult=(1, 1, 1, 1),
                                    vocab_size=64, v_patch_nums=(1, 2, 4))
KERNEL = ("decoder", "conv_out", "kernel")
WEIGHTS = rl.LossWeights(l1=1.0, l2=1.0, perceptual=0.5, disc_start=1)


@functools.partial(jax.jit, static_argnames="weights")
def generator_step(params, buffers, disc_vars, lpips, images, step, rng,
                   weights):
  """(grads, metrics) of the generator-side tokenizer loss."""
  model, disc = HybridTokenizer(CONFIG), PatchDiscriminator()

  def loss_fn(params):
    variables = {"params": params, "buffers": buffers}
    f = model.apply(variables, images, method=HybridTokenizer.encode_latent)
    q = model.apply(variables, f, rng,
                    method=lambda m, f, r: m.quantize.train_forward(f, r))

    def decode(w):
      v = {"params": gan.replace_leaf(params, KERNEL, w), "buffers": buffers}
      return model.apply(v, q["fhat"], method=HybridTokenizer.decode)

    def disc_logits(img):
      logits, _ = disc.apply(disc_vars, img, train=True,
                             mutable=["batch_stats"])
      return logits

    def rec_of(img):
      return rl.reconstruction_loss(images, img, lpips(images, img),
                                    weights)[0]

    recon, d_weight = gan.decode_with_adaptive_weight(
        decode, gan.get_leaf(params, KERNEL), rec_of,
        lambda img: gan.generator_loss(disc_logits(img)), weights.disc)
    total, metrics = rl.tokenizer_loss(
        images, recon, vq_loss=q["vq_loss"],
        perceptual=lpips(images, recon),
        g_loss=gan.generator_loss(disc_logits(recon)),
        adaptive_weight=d_weight,
        disc_factor=gan.disc_start_factor(step, weights.disc_start,
                                          weights.disc_factor),
        weights=weights)
    metrics.update(cb.codebook_usage(q["hits"]))
    return total, metrics

  return jax.grad(loss_fn, has_aux=True)(params)


def test_generator_step_on_tokenizer(tmp_path):
  path = str(tmp_path / "lpips.safetensors")
  safetensors.numpy.save_file(helpers.random_lpips_state_dict(), path)
  lpips, enabled = lp.make_lpips(path)
  assert enabled
  images = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), minval=-1.0)
  vae = helpers.numpy_init(HybridTokenizer(CONFIG), 0, images,
                    method=HybridTokenizer.init_all)
  disc_vars = helpers.numpy_init(PatchDiscriminator(), 1, images)
  args = (vae["params"], vae["buffers"], disc_vars, lpips, images)

  grads, m = generator_step(*args, 0, jax.random.key(2), weights=WEIGHTS)
  assert m["disc_factor"] == 0.0 and m["adaptive_weight"] > 0.0
  assert m["perceptual"] > 0.0 and m["perplexity"].shape == (3,)
  assert all(np.isfinite(v).all() for v in jax.tree.leaves((grads, m)))
  # The decoder trains, and the encoder through the straight-through path.
  for part in ("decoder", "encoder", "post_quant_conv"):
    assert any(np.abs(g).max() > 0 for g in jax.tree.leaves(grads[part]))

  # After disc_start the GAN term enters the total with the same weight.
  _, m1 = generator_step(*args, 1, jax.random.key(2), weights=WEIGHTS)
  np.testing.assert_allclose(m1["adaptive_weight"], m["adaptive_weight"])
  np.testing.assert_allclose(
      m1["total"] - m["total"],
      m1["adaptive_weight"] * m1["g_loss"], rtol=1e-4, atol=1e-6)
