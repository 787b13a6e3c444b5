"""GAN terms of tokenizer training (VQGAN / taming-transformers recipe).

HART's trainer is not released (hart_spec.md 3); these follow taming's
`VQLPIPSWithDiscriminator`, which VAR-style tokenizers inherit: hinge loss
for the discriminator, -mean(D(x_hat)) for the generator, and the adaptive
weight that scales the generator term so its gradient at the decoder's last
layer is as large as the reconstruction loss's.

All functions are pure and jit-able. A generator step, with
`KERNEL = ("decoder", "conv_out", "kernel")` in HybridTokenizer params
(tests/losses/test_tokenizer_step.py runs exactly this):

  def loss_fn(params):
    q = ...  # encode_latent + quantize.train_forward -> fhat, vq_loss, hits
    def decode(w):  # the decoder with its last kernel as an explicit input
      p = replace_leaf(params, KERNEL, w)
      return model.apply({"params": p, "buffers": buffers}, q["fhat"],
                         method=HybridTokenizer.decode)
    def disc_logits(img):
      return disc.apply(disc_vars, img, train=True,
                        mutable=["batch_stats"])[0]
    def rec_of(img):
      return reconstruction_loss(images, img, lpips(images, img), weights)[0]
    recon, d_weight = decode_with_adaptive_weight(
        decode, get_leaf(params, KERNEL), rec_of,
        lambda img: generator_loss(disc_logits(img)), weights.disc)
    # `recon` carries gradients to all of params: it is the recon to train.
    return tokenizer_loss(
        images, recon, vq_loss=q["vq_loss"], perceptual=lpips(images, recon),
        g_loss=generator_loss(disc_logits(recon)), adaptive_weight=d_weight,
        disc_factor=disc_start_factor(step, weights.disc_start,
                                      weights.disc_factor), weights=weights)

One decoder forward serves the loss and both last-layer gradients (those
only need the last conv's VJP); like torch's `autograd.grad`, the weight
costs one extra backward of LPIPS and the discriminator w.r.t. the image.
`adaptive_weight_from_fns` is the simpler closure form; it re-runs the
decoder per closure, which XLA may or may not deduplicate.
"""

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

PyTree = Any


def hinge_discriminator_loss(logits_real: jax.Array,
                             logits_fake: jax.Array) -> jax.Array:
  """taming's `hinge_d_loss`: 0.5 (E[relu(1 - D(x))] + E[relu(1 + D(x^)]).

  Args:
    logits_real: discriminator logits on real images (any shape).
    logits_fake: logits on reconstructions, computed from stop-gradient
      reconstructions so this loss only trains the discriminator.

  Returns:
    Scalar float32 loss. Multiply by `disc_start_factor(step, ...)`.
  """
  real = jnp.mean(jax.nn.relu(1.0 - logits_real.astype(jnp.float32)))
  fake = jnp.mean(jax.nn.relu(1.0 + logits_fake.astype(jnp.float32)))
  return 0.5 * (real + fake)


def generator_loss(logits_fake: jax.Array) -> jax.Array:
  """-mean(D(x_hat)): the generator side of the hinge GAN (scalar, fp32)."""
  return -jnp.mean(logits_fake.astype(jnp.float32))


def disc_start_factor(step: jax.Array | int, start: int,
                      factor: float = 1.0) -> jax.Array:
  """`factor` once `step >= start`, else 0 (taming's `adopt_weight`).

  Args:
    step: the global step (may be traced).
    start: the first step with a GAN loss.
    factor: the discriminator factor after the start.

  Returns:
    float32 scalar, for both the generator and the discriminator terms.
  """
  return jnp.where(jnp.asarray(step) >= start, jnp.float32(factor),
                   jnp.float32(0.0))


def _global_norm(tree: PyTree) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32)))
                      for x in leaves))


def adaptive_weight(rec_grad: PyTree, gan_grad: PyTree,
                    disc_weight: float = 1.0,
                    max_weight: float = 1e4) -> jax.Array:
  """VQGAN's adaptive weight from last-layer gradients.

  d = clip(||rec_grad|| / (||gan_grad|| + 1e-4), 0, max_weight) * disc_weight,
  with gradients stopped: it is a scale, not something to optimise.

  Args:
    rec_grad: d(reconstruction + perceptual loss) / d(last-layer kernel),
      an array or pytree (norm over all leaves).
    gan_grad: d(generator loss) / d(same kernel).
    disc_weight: taming's `discriminator_weight`.
    max_weight: upper clip.

  Returns:
    float32 scalar.
  """
  ratio = _global_norm(rec_grad) / (_global_norm(gan_grad) + 1e-4)
  ratio = jnp.clip(ratio, 0.0, max_weight)
  return jax.lax.stop_gradient(ratio) * disc_weight


def adaptive_weight_from_fns(rec_loss_fn: Callable[[jax.Array], jax.Array],
                             gan_loss_fn: Callable[[jax.Array], jax.Array],
                             last_layer: jax.Array,
                             disc_weight: float = 1.0,
                             max_weight: float = 1e4) -> jax.Array:
  """`adaptive_weight` with the gradients taken by jax.grad.

  Args:
    rec_loss_fn: last-layer kernel -> scalar reconstruction loss.
    gan_loss_fn: last-layer kernel -> scalar generator loss.
    last_layer: the kernel at which to differentiate.
    disc_weight: taming's `discriminator_weight`.
    max_weight: upper clip.

  Returns:
    float32 scalar (gradient stopped).
  """
  last_layer = jax.lax.stop_gradient(last_layer)
  return adaptive_weight(jax.grad(rec_loss_fn)(last_layer),
                         jax.grad(gan_loss_fn)(last_layer),
                         disc_weight, max_weight)


def decode_with_adaptive_weight(
    decode_fn: Callable[[jax.Array], jax.Array],
    last_layer: jax.Array,
    rec_loss_fn: Callable[[jax.Array], jax.Array],
    gan_loss_fn: Callable[[jax.Array], jax.Array],
    disc_weight: float = 1.0,
    max_weight: float = 1e4) -> tuple[jax.Array, jax.Array]:
  """Decodes once and returns the image and the adaptive weight.

  The last-layer gradients are the VJP of `decode_fn` at `last_layer`,
  pulled back from d(loss)/d(image); JAX only linearises the ops that
  depend on the kernel (the last conv), so this costs one forward plus two
  cheap VJPs, besides the backward passes of the two losses themselves.

  Args:
    decode_fn: last-layer kernel -> reconstruction. It may close over other
      traced params: the returned image stays differentiable in them (and
      in `last_layer`), so it is the reconstruction to train on.
    last_layer: the decoder's last kernel, e.g. get_leaf(params, KERNEL).
    rec_loss_fn: reconstruction image -> scalar rec (+ perceptual) loss.
    gan_loss_fn: reconstruction image -> scalar generator loss.
    disc_weight: taming's `discriminator_weight`.
    max_weight: upper clip.

  Returns:
    (reconstruction, adaptive weight scalar with gradient stopped).
  """
  recon, pullback = jax.vjp(decode_fn, last_layer)
  img = jax.lax.stop_gradient(recon)
  (rec_grad,) = pullback(jax.grad(rec_loss_fn)(img).astype(recon.dtype))
  (gan_grad,) = pullback(jax.grad(gan_loss_fn)(img).astype(recon.dtype))
  return recon, adaptive_weight(rec_grad, gan_grad, disc_weight, max_weight)


def get_leaf(tree: PyTree, path: Sequence[str]) -> Any:
  """tree[path[0]][path[1]]... for nested param dicts."""
  for key in path:
    tree = tree[key]
  return tree


def replace_leaf(tree: PyTree, path: Sequence[str], value: Any) -> PyTree:
  """A copy of a nested dict with one leaf replaced (others shared)."""
  if not path:
    return value
  head, rest = path[0], path[1:]
  out = dict(tree)
  out[head] = replace_leaf(tree[head], rest, value)
  return out
