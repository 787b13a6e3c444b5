"""PSNR, SSIM (against scikit-image) and codebook usage / perplexity."""

import jax
import numpy as np
import pytest

from hart_jax.errors import InputError
from hart_jax.evals import recon_metrics as rm
from tests.helpers import require_module

_ssim = jax.jit(rm.ssim)


@pytest.fixture(scope="module")
def pair():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (3, 32, 40, 3)).astype(np.uint8)
  # A bright, low-contrast image: where float32 E[x^2] - mu^2 would lose
  # digits; a smooth one; and plain noise.
  x[0] = x[0] // 8 + 220
  x[1] = np.linspace(0, 255, 40)[None, :, None].astype(np.uint8)
  y = np.clip(x + rng.normal(0, 12, x.shape), 0, 255).astype(np.uint8)
  return x, y


def test_ssim_matches_scikit_image(pair):
  metrics = require_module("skimage.metrics", "pip install scikit-image")
  x, y = pair
  want = [metrics.structural_similarity(
      a.astype(np.float64), b.astype(np.float64), gaussian_weights=True,
      sigma=1.5, use_sample_covariance=False, data_range=255,
      channel_axis=-1) for a, b in zip(x, y)]
  got = np.asarray(_ssim(x, y, 255.0))
  # Measured: 1.8e-7 on [0, 255] and on [0, 1] data.
  np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_allclose(_ssim(x / 255.0, y / 255.0, 1.0), want,
                             atol=1e-6)
  # SSIM's luminance term is not shift-invariant: [-1, 1] data is not the
  # same as [0, 1] data with range 2 (which is why ssim's docstring says
  # to map it to [0, 1] first).
  shifted = np.asarray(_ssim(x / 127.5 - 1, y / 127.5 - 1, 2.0))
  assert np.abs(shifted - want).max() > 1e-2


def test_ssim_of_identical_images_is_one(pair):
  x = pair[0]
  np.testing.assert_allclose(_ssim(x, x, 255.0), 1.0, atol=1e-6)
  with pytest.raises(InputError, match="H, W >= 11"):
    rm.ssim(x[:, :10], x[:, :10], 255.0)


def test_psnr_is_analytic():
  x = np.zeros((2, 8, 8, 3), np.float32)
  y = x.copy()
  y[0] += 0.1  # MSE 0.01 on a range of 1: 20 dB
  y[1, :4] += 0.5  # MSE 0.125: 10 log10(8)
  got = np.asarray(rm.psnr(x, y, 1.0))
  np.testing.assert_allclose(got, [20.0, 10 * np.log10(8.0)], rtol=1e-6)
  np.testing.assert_allclose(rm.psnr(x * 255, y * 255, 255.0), got,
                             rtol=1e-5)
  assert np.isinf(rm.psnr(x, x, 1.0)).all()


def test_codebook_usage_and_perplexity_are_analytic():
  v = 8
  uniform = np.arange(16).reshape(1, 4, 4) % v  # each code twice
  single = np.full((1, 2, 2), 3)
  half = np.array([[[0, 0, 0, 1]]])  # p = (3/4, 1/4)
  counts = rm.code_counts([uniform, single, half], v)
  assert counts.shape == (3, v) and counts.sum() == 16 + 4 + 4
  # Two batches are counted by adding their counts.
  np.testing.assert_array_equal(
      rm.code_counts([uniform[:, :2], single, half], v)
      + rm.code_counts([uniform[:, 2:], single[:, :0], half[:, :, :0]], v),
      counts)
  usage, perplexity = rm.codebook_stats(counts)
  np.testing.assert_allclose(usage, [1.0, 1 / 8, 2 / 8, 1.0])
  h_half = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
  pooled = counts.sum(0) / counts.sum()
  h_pooled = -np.sum(pooled * np.log(pooled))
  np.testing.assert_allclose(perplexity,
                             [8.0, 1.0, np.exp(h_half), np.exp(h_pooled)],
                             rtol=1e-12)
  with pytest.raises(InputError, match=r"scale 1: .*outside \[0, 8\)"):
    rm.code_counts([uniform, single + 5], v)
