"""Reconstruction losses and the tokenizer's total generator-side loss.

The total follows taming's `VQLPIPSWithDiscriminator` (hart_spec.md 3: the
official code only has MSE + vq loss; perceptual and GAN terms lived in
the unreleased trainer):

  total = rec + vq * vq_loss + adaptive_weight * disc_factor * g_loss
  rec   = l1 * |x - x^| + l2 * (x - x^)^2 + perceptual * LPIPS(x, x^)

All terms are float32 means. The pieces come from `gan.py` (g_loss,
adaptive weight, disc factor), `lpips.py` (perceptual) and the quantizer
(vq_loss), so the train step stays a short list of calls.
"""

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class LossWeights:
  """Weights of the tokenizer loss terms (taming's defaults where known).

  Attributes:
    l1: pixel L1 weight (taming uses L1).
    l2: pixel MSE weight (HART's released code uses MSE).
    perceptual: LPIPS weight.
    vq: weight of the quantizer's vq loss (taming's codebook_weight).
    disc: taming's `discriminator_weight`, multiplies the adaptive weight.
    disc_factor: GAN factor after `disc_start` (taming's disc_factor).
    disc_start: first step with GAN terms.
  """
  l1: float = 1.0
  l2: float = 0.0
  perceptual: float = 1.0
  vq: float = 1.0
  disc: float = 0.5
  disc_factor: float = 1.0
  disc_start: int = 0


def l1_loss(x: jax.Array, y: jax.Array) -> jax.Array:
  """mean |x - y| in float32."""
  return jnp.mean(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32)))


def l2_loss(x: jax.Array, y: jax.Array) -> jax.Array:
  """mean (x - y)^2 in float32 (F.mse_loss)."""
  return jnp.mean(jnp.square(x.astype(jnp.float32) - y.astype(jnp.float32)))


def reconstruction_loss(images: jax.Array, recon: jax.Array,
                        perceptual: jax.Array | float,
                        weights: LossWeights
                        ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The weighted pixel + perceptual loss (the adaptive weight's "rec").

  Args:
    images: targets [B, H, W, 3] in [-1, 1].
    recon: reconstructions, same shape.
    perceptual: LPIPS per image [B] (or a scalar) of (images, recon); pass
      0.0 (or a disabled `Lpips`'s zeros) to leave it out.
    weights: loss weights.

  Returns:
    (scalar loss, {"l1", "l2", "perceptual"} unweighted float32 values).
  """
  metrics = dict(l1=l1_loss(images, recon), l2=l2_loss(images, recon),
                 perceptual=jnp.mean(jnp.asarray(perceptual, jnp.float32)))
  rec = (weights.l1 * metrics["l1"] + weights.l2 * metrics["l2"] +
         weights.perceptual * metrics["perceptual"])
  return rec, metrics


def tokenizer_loss(images: jax.Array, recon: jax.Array, *,
                   vq_loss: jax.Array,
                   perceptual: jax.Array | float,
                   g_loss: jax.Array | float,
                   adaptive_weight: jax.Array | float,
                   disc_factor: jax.Array | float,
                   weights: LossWeights
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Total generator-side tokenizer loss from already-computed pieces.

  Args:
    images: targets [B, H, W, 3] in [-1, 1].
    recon: reconstructions, same shape (gradients flow to the model).
    vq_loss: the quantizer's scalar vq loss.
    perceptual: LPIPS of (images, recon), [B] or scalar.
    g_loss: `gan.generator_loss(D(recon))`, or 0.0 without a GAN.
    adaptive_weight: from `gan.adaptive_weight*` (already times
      `weights.disc`, gradient stopped), or 0.0.
    disc_factor: `gan.disc_start_factor(step, weights.disc_start,
      weights.disc_factor)`.
    weights: loss weights.

  Returns:
    (total scalar, float32 metrics: l1, l2, perceptual, rec, vq, g_loss,
    adaptive_weight, disc_factor, total).
  """
  rec, metrics = reconstruction_loss(images, recon, perceptual, weights)
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  gan = f32(adaptive_weight) * f32(disc_factor) * f32(g_loss)
  total = rec + weights.vq * f32(vq_loss) + gan
  metrics.update(rec=rec, vq=f32(vq_loss), g_loss=f32(g_loss),
                 adaptive_weight=f32(adaptive_weight),
                 disc_factor=f32(disc_factor), total=total)
  return total, metrics
