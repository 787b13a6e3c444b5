"""The official PatchGAN discriminator (`disc.*` of the tokenizer folder).

pix2pix's NLayerDiscriminator as HART ships it: ndf 64, 3 layers, 4x4
convs, BatchNorm, LeakyReLU(0.2). It is only used for tokenizer training;
it lives here so the exported folder carries the same `disc.*` tensors the
official `HARTAutoEncoderWithDisc` expects.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp


class BatchNorm2d(nn.Module):
  """torch.nn.BatchNorm2d semantics (NHWC), incl. its buffers.

  flax's BatchNorm updates the running variance with the biased batch
  variance; torch uses the unbiased one, and keeps `num_batches_tracked`.
  Both matter for a faithful export, hence this small module.
  """
  features: int
  momentum: float = 0.1
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    scale = self.param("scale", nn.initializers.ones, (self.features,))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    mean = self.variable("batch_stats", "mean", jnp.zeros, (self.features,))
    var = self.variable("batch_stats", "var", jnp.ones, (self.features,))
    count = self.variable("batch_stats", "num_batches_tracked",
                          lambda: jnp.zeros((), jnp.int32))
    x32 = x.astype(jnp.float32)
    if train:
      axes = tuple(range(x.ndim - 1))
      n = x.size // x.shape[-1]
      b_mean = x32.mean(axes)
      b_var = jnp.mean((x32 - b_mean) ** 2, axes)
      if not self.is_initializing():
        m = self.momentum
        mean.value = (1 - m) * mean.value + m * b_mean
        var.value = (1 - m) * var.value + m * b_var * n / max(n - 1, 1)
        count.value = count.value + 1
      use_mean, use_var = b_mean, b_var
    else:
      use_mean, use_var = mean.value, var.value
    y = (x32 - use_mean) * jax.lax.rsqrt(use_var + self.eps) * scale + bias
    return y.astype(x.dtype)


class PatchDiscriminator(nn.Module):
  """Image [B, H, W, 3] -> patch logits [B, H', W', 1]."""
  ndf: int = 64
  n_layers: int = 3

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    # Layer indices follow the official nn.Sequential, so `main_2` is
    # `disc.main.2`; LeakyReLUs occupy the indices in between.
    def conv4(features, stride, idx, bias):
      return nn.Conv(features, (4, 4), strides=(stride, stride), padding=1,
                     use_bias=bias, name=f"main_{idx}")

    h = nn.leaky_relu(conv4(self.ndf, 2, 0, True)(x), 0.2)
    idx, mult = 2, 1
    for n in range(1, self.n_layers + 1):
      mult = min(2 ** n, 8)
      stride = 2 if n < self.n_layers else 1
      h = conv4(self.ndf * mult, stride, idx, False)(h)
      h = BatchNorm2d(self.ndf * mult, name=f"main_{idx + 1}")(h, train)
      h = nn.leaky_relu(h, 0.2)
      idx += 3
    return conv4(1, 1, idx, True)(h)
