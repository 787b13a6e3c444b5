"""Reconstruction metrics of the tokenizer: PSNR, SSIM, codebook use.

PSNR and SSIM take NHWC batches and the `data_range` of their scale (255
for uint8 data, 1 for [0, 1]) and return one value per image; they are
jittable. SSIM's luminance term is not shift-invariant: map [-1, 1] model
outputs to [0, 1] (or [0, 255]) before calling it, as the published
numbers are on [0, 255] images. SSIM is Wang et al. (2004) as their
reference code and `skimage.metrics.structural_similarity(...,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=R)` compute it: an 11x11 Gaussian window (sigma 1.5,
normalised to sum 1), K1 = 0.01, K2 = 0.03, the SSIM map over the
positions where the window fits inside the image, averaged over those
positions and over channels.

Codebook use is counted on the host: `code_counts` accumulates how often
each code appears per scale (sum the counts of many batches), and
`codebook_stats` turns counts into usage (the fraction of the codebook
used at least once) and perplexity (exp of the entropy of the code
frequencies: V when all V codes are equally used, 1 for a single code).
"""

import numpy as np
import jax
import jax.numpy as jnp

from hart_jax.errors import InputError

_WINDOW = 11
_SIGMA = 1.5
_K1, _K2 = 0.01, 0.03


def psnr(x: jax.Array, y: jax.Array, data_range: float) -> jax.Array:
  """10 log10(R^2 / MSE) per image of [B, H, W, C] batches (inf if equal)."""
  diff = x.astype(jnp.float32) - y.astype(jnp.float32)
  mse = jnp.mean(diff * diff, axis=(1, 2, 3))
  return 10.0 * jnp.log10(data_range ** 2 / mse)


def _gaussian_window() -> np.ndarray:
  r = np.arange(_WINDOW) - _WINDOW // 2
  g = np.exp(-(r * r) / (2 * _SIGMA ** 2))
  return (g / g.sum()).astype(np.float32)


def _filter(x: jax.Array) -> jax.Array:
  """Separable 'valid' Gaussian filter of [N, H, W] maps."""
  g = jnp.asarray(_gaussian_window())
  hp = jax.lax.Precision.HIGHEST
  x = jax.lax.conv_general_dilated(x[..., None], g.reshape(_WINDOW, 1, 1, 1),
                                   (1, 1), "VALID", precision=hp,
                                   dimension_numbers=("NHWC", "HWIO",
                                                      "NHWC"))
  x = jax.lax.conv_general_dilated(x, g.reshape(1, _WINDOW, 1, 1), (1, 1),
                                   "VALID", precision=hp,
                                   dimension_numbers=("NHWC", "HWIO",
                                                      "NHWC"))
  return x[..., 0]


def ssim(x: jax.Array, y: jax.Array, data_range: float) -> jax.Array:
  """Mean SSIM per image of [B, H, W, C] batches (H, W >= 11).

  Args:
    x: images, any float or integer dtype.
    y: images like x.
    data_range: max - min of the data's scale: 255 for [0, 255] data, 1
      for [0, 1] data (images must start at 0; see the module docstring).

  Returns:
    float32 [B]; 1 for identical images.
  """
  if x.shape != y.shape or x.ndim != 4 or min(x.shape[1:3]) < _WINDOW:
    raise InputError(f"SSIM takes two [B, H, W, C] batches of one shape "
                     f"with H, W >= {_WINDOW}; got {list(x.shape)} and "
                     f"{list(y.shape)}")
  b, h, w, c = x.shape
  # Channels become maps: [B * C, H, W].
  x, y = (jnp.moveaxis(v.astype(jnp.float32), -1, 1).reshape(b * c, h, w)
          / data_range for v in (x, y))
  # Variances as E[(x - m)^2] - (mu - m)^2 with m the map's mean: the same
  # value as E[x^2] - mu^2, without float32 cancellation on bright images.
  cx = x - jnp.mean(x, axis=(1, 2), keepdims=True)
  cy = y - jnp.mean(y, axis=(1, 2), keepdims=True)
  mu_x, mu_y = _filter(x), _filter(y)
  mcx, mcy = _filter(cx), _filter(cy)
  var_x = _filter(cx * cx) - mcx * mcx
  var_y = _filter(cy * cy) - mcy * mcy
  cov = _filter(cx * cy) - mcx * mcy
  c1, c2 = _K1 ** 2, _K2 ** 2  # data scaled to a range of 1 above
  s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)
       / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2)))
  return jnp.mean(s.reshape(b, c, -1), axis=(1, 2))


def code_counts(index_maps, codebook_size: int) -> np.ndarray:
  """How often each code occurs, per scale.

  Args:
    index_maps: one integer array per scale (e.g. [B, h_k, w_k] from the
      multi-scale quantizer), any shape.
    codebook_size: V.

  Returns:
    int64 [num_scales, V]; add the counts of several batches to cover a
    dataset.

  Raises:
    InputError: an index outside [0, V).
  """
  rows = []
  for k, idx in enumerate(index_maps):
    idx = np.asarray(idx).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= codebook_size):
      raise InputError(f"scale {k}: code indices span [{idx.min()}, "
                       f"{idx.max()}], outside [0, {codebook_size})")
    rows.append(np.bincount(idx.astype(np.int64),
                            minlength=codebook_size))
  return np.stack(rows).astype(np.int64)


def codebook_stats(counts) -> tuple[np.ndarray, np.ndarray]:
  """Usage and perplexity per scale, and over all scales (last row).

  Args:
    counts: [num_scales, V] from `code_counts` (summed over batches).

  Returns:
    (usage, perplexity), each float64 [num_scales + 1]: usage is the
    fraction of the V codes seen at least once, perplexity exp(H) of the
    empirical code distribution (0 log 0 = 0). The last entry pools all
    scales.
  """
  counts = np.asarray(counts, np.float64)
  counts = np.concatenate([counts, counts.sum(0, keepdims=True)])
  usage = (counts > 0).mean(axis=1)
  total = counts.sum(axis=1, keepdims=True)
  p = np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)
  logp = np.log(p, out=np.zeros_like(p), where=p > 0)
  return usage, np.exp(-(p * logp).sum(axis=1))
