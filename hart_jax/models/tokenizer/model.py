"""The hybrid tokenizer: encoder, quant_conv, quantizer, post_quant_conv, decoder.

One flax module whose methods are the official tokenizer's entry points
(images NHWC in [-1, 1]). Call them with `module.apply(variables, ...,
method=HybridTokenizer.<name>)`; `variables` holds `params` and the
`buffers` collection (the official `ema_vocab_hit_SV`).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hart_jax.models.tokenizer.autoencoder import Decoder, Encoder, conv
from hart_jax.models.tokenizer.config import TokenizerConfig
from hart_jax.models.tokenizer.quantizer import MultiScaleQuantizer

Dtype = Any


class HybridTokenizer(nn.Module):
  """HART's `HARTAutoEncoder` (the `vae.` half of the official folder)."""
  config: TokenizerConfig
  dtype: Dtype = jnp.float32

  def setup(self):
    c = self.config
    self.encoder = Encoder(c, self.dtype)
    self.decoder = Decoder(c, self.dtype)
    self.quant_conv = conv(c.z_channels, c.quant_conv_ks, jnp.float32,
                           "quant_conv")
    self.post_quant_conv = conv(c.z_channels, c.quant_conv_ks, self.dtype,
                                "post_quant_conv")
    self.quantize = MultiScaleQuantizer(c)
    if c.double_decoder:
      # The discrete-only path's own decoder (official `double_decoder`).
      self.decoder2 = Decoder(c, self.dtype)
      self.post_quant_conv2 = conv(c.z_channels, c.quant_conv_ks, self.dtype,
                                   "post_quant_conv2")

  def __call__(self, images: jax.Array, rng: jax.Array | None = None,
               train: bool = False, skip_continuous_prob: float | None = None):
    """The official autoencoder training forward: reconstruction + VQ loss."""
    q = self.quantize.train_forward(self.encode_latent(images, train), rng,
                                    skip_continuous_prob)
    q["recon"] = self.decode(q["fhat"], train)
    return q

  def init_all(self, images: jax.Array) -> jax.Array:
    """Touches every parameter; `init` with this works at any image size.

    The schedule only constrains the latent's size in the quantizer's
    *methods*, so initialising through here with a tiny image avoids a
    full-resolution forward just to create the weights.
    """
    f = self.encode_latent(images)
    self.quantize.touch_all(f)
    out = self.decode(f)
    if self.config.double_decoder:
      out = out + self.decode_discrete_only(f)
    return out

  def encode_latent(self, images: jax.Array, train: bool = False):
    """Images [B, H, W, 3] -> latent f = quant_conv(encoder(x)) [B, h, w, C]."""
    _check_images(images, self.config)
    feats = self.encoder(images, train).astype(jnp.float32)
    return self.quant_conv(feats)

  def decode(self, fhat: jax.Array, train: bool = False) -> jax.Array:
    """Latent -> image, unclamped (the official `fhat_to_img` clamps)."""
    return self.decoder(self.post_quant_conv(fhat), train)

  def decode_discrete_only(self, fhat: jax.Array,
                           train: bool = False) -> jax.Array:
    """The decoder for discrete-only latents (decoder2 if double_decoder)."""
    if self.config.double_decoder:
      return self.decoder2(self.post_quant_conv2(fhat), train)
    return self.decode(fhat, train)

  def fhat_to_img(self, fhat: jax.Array) -> jax.Array:
    return jnp.clip(self.decode(fhat), -1.0, 1.0)

  def encode(self, images: jax.Array, patch_nums=None):
    """Images -> (per-scale index maps, residual before the last scale).

    The official `img_to_idxBl_and_frest`.
    """
    return self.quantize.encode(self.encode_latent(images), patch_nums)

  def tokenize(self, images: jax.Array, patch_nums=None) -> dict[str, Any]:
    """Images -> everything the transformer trains on (hart_spec.md 2.8).

    Returns a dict: `indices` (list of [B, pn*pn]), `var_input`
    [B, L - 1, C] (teacher-forcing input), `frest_before_last` [B, P*P, C]
    (`last_layer_gt`), `residual` [B, P*P, C] (the continuous token).
    """
    indices, frest = self.encode(images, patch_nums)
    last = jnp.take(self.quantize.embedding, indices[-1], axis=0)
    return dict(
        indices=indices,
        var_input=self.quantize.teacher_forcing_input(indices, patch_nums),
        frest_before_last=frest,
        residual=frest - last)

  def reconstruct(self, images: jax.Array, patch_nums=None):
    """Hybrid and discrete-only reconstructions, both clamped to [-1, 1]."""
    indices, frest = self.encode(images, patch_nums)
    last = jnp.take(self.quantize.embedding, indices[-1], axis=0)
    hybrid = self.quantize.indices_to_fhat(indices, frest - last, patch_nums)
    discrete = self.quantize.indices_to_fhat(indices, None, patch_nums)
    return (jnp.clip(self.decode(hybrid), -1.0, 1.0),
            jnp.clip(self.decode_discrete_only(discrete), -1.0, 1.0))

  def indices_to_img(self, indices, residual=None, patch_nums=None):
    """Index maps (+ optional continuous residual) -> image in [-1, 1]."""
    fhat = self.quantize.indices_to_fhat(indices, residual, patch_nums)
    if residual is None:
      return jnp.clip(self.decode_discrete_only(fhat), -1.0, 1.0)
    return self.fhat_to_img(fhat)


def _check_images(images: jax.Array, config: TokenizerConfig) -> None:
  f = config.downsample
  if (images.ndim != 4 or images.shape[-1] != config.in_channels
      or images.shape[1] % f or images.shape[2] % f):
    raise ValueError(
        f"images must be [B, H, W, {config.in_channels}] with H and W "
        f"multiples of {f}; got shape {images.shape}")
