"""The Frechet distance, feature statistics, their files, clean resizing."""

import logging

import numpy as np
from PIL import Image
import pytest

from hart_jax.errors import InputError
from hart_jax.evals import fid, resize


def _random_spd(rng, d):
  a = rng.normal(size=(d, 2 * d))
  return a @ a.T / (2 * d) + 0.1 * np.eye(d)


def _reference_fid(mu1, s1, mu2, s2):
  """Independent float64 route: Tr((S1 S2)^1/2) is the sum of the square
  roots of the eigenvalues of S1 S2 (real and >= 0 for SPD S1, S2)."""
  eig = np.linalg.eigvals(s1 @ s2).real
  diff = mu1 - mu2
  return (diff @ diff + np.trace(s1) + np.trace(s2)
          - 2 * np.sqrt(np.clip(eig, 0, None)).sum())


def test_matches_a_float64_reference_on_known_gaussians():
  rng = np.random.default_rng(0)
  d = 32
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
  got = fid.frechet_distance(mu1, s1, mu2, s2)
  want = _reference_fid(mu1, s1, mu2, s2)
  assert want > 1.0
  # Measured: 4e-16 relative.
  np.testing.assert_allclose(got, want, rtol=1e-9)


def test_diagonal_gaussians_have_the_closed_form():
  """For diagonal covariances the distance is |mu1 - mu2|^2 +
  sum_i (sqrt(a_i) - sqrt(b_i))^2."""
  rng = np.random.default_rng(1)
  d = 64
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
  want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
  np.testing.assert_allclose(got, want, rtol=1e-12)


def test_identical_statistics_give_zero():
  rng = np.random.default_rng(2)
  mu, sigma = fid.feature_statistics(rng.normal(size=(300, 48)))
  # sqrtm of sigma^2 returns sigma up to rounding: measured 6e-14 with
  # Tr(sigma) = 48.
  assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * np.trace(
      sigma)


def test_singular_product_gets_the_eps_offset(caplog):
  # A nilpotent product has no square root: sqrtm returns inf, and the
  # distance is computed with eps on both diagonals, as pytorch-fid does.
  s1, s2 = np.array([[0.0, 1.0], [0.0, 0.0]]), np.eye(2)
  with caplog.at_level(logging.WARNING):
    got = fid.frechet_distance(np.zeros(2), s1, np.zeros(2), s2, eps=1e-6)
  assert np.isfinite(got)
  assert "singular" in caplog.text


def test_a_large_imaginary_part_is_an_error():
  # sigma1 = -I is no covariance: sqrt(-I) = iI is not rounding noise.
  with pytest.raises(InputError, match="imaginary part of 1"):
    fid.frechet_distance(np.zeros(3), -np.eye(3), np.zeros(3), np.eye(3))
  with pytest.raises(InputError, match="do not match"):
    fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_statistics_and_the_image_count_rules(caplog):
  feats = np.random.default_rng(3).normal(size=(20, 8)).astype(np.float32)
  with caplog.at_level(logging.WARNING):
    mu, sigma = fid.feature_statistics(feats)
  np.testing.assert_allclose(mu, feats.astype(np.float64).mean(0))
  np.testing.assert_allclose(sigma, np.cov(feats.astype(np.float64),
                                           rowvar=False))
  assert mu.dtype == sigma.dtype == np.float64
  assert "FID from 20 images is unreliable" in caplog.text
  for n in (0, 1):
    with pytest.raises(InputError, match="FID needs at least 2 images"):
      fid.feature_statistics(feats[:n])
  with pytest.raises(InputError, match="FID needs at least 2 images"):
    fid.fid_from_features(feats[:1], mu, sigma)
  # Same distribution, same statistics: the FID of a set against itself.
  assert abs(fid.fid_from_features(feats, mu, sigma)) < 1e-9


def test_statistics_files_round_trip_and_bad_files(tmp_path):
  rng = np.random.default_rng(4)
  mu, sigma = rng.normal(size=6), _random_spd(rng, 6)
  path = str(tmp_path / "ref_stats.npz")
  fid.save_statistics(path, mu, sigma)
  got_mu, got_sigma = fid.load_statistics(path)
  np.testing.assert_array_equal(got_mu, mu)
  np.testing.assert_array_equal(got_sigma, sigma)
  with pytest.raises(InputError, match="not found: .*missing.npz"):
    fid.load_statistics(str(tmp_path / "missing.npz"))
  np.savez(tmp_path / "no_sigma.npz", mu=mu)
  with pytest.raises(InputError, match=r"no sigma .*\['mu'\]"):
    fid.load_statistics(str(tmp_path / "no_sigma.npz"))
  np.savez(tmp_path / "shapes.npz", mu=mu, sigma=sigma[:5])
  with pytest.raises(InputError, match="not \\[D\\] and \\[D, D\\]"):
    fid.load_statistics(str(tmp_path / "shapes.npz"))
  (tmp_path / "junk.npz").write_bytes(b"not a zip file")
  with pytest.raises(InputError, match="cannot be read"):
    fid.load_statistics(str(tmp_path / "junk.npz"))


def _clean_fid_resize(image, size):
  """clean-fid's make_resizer("PIL", False, "bicubic", (size, size)),
  written out: each channel as a float32 mode-F PIL image, bicubic,
  clipped to [0, 255], stacked as float32."""
  channels = []
  for c in range(3):
    pil = Image.fromarray(image[:, :, c].astype(np.float32))
    assert pil.mode == "F"
    out = pil.resize((size, size), resample=Image.BICUBIC)
    channels.append(np.asarray(out).clip(0, 255).reshape(size, size, 1))
  return np.concatenate(channels, axis=2).astype(np.float32)


def test_clean_resize_is_clean_fids():
  rng = np.random.default_rng(5)
  # Hard edges make bicubic overshoot: the clip to [0, 255] matters.
  image = (rng.integers(0, 2, (37, 53, 3)) * 255).astype(np.uint8)
  got = resize.clean_resize(image)
  want = _clean_fid_resize(image, 299)
  np.testing.assert_array_equal(got, want)
  assert got.dtype == np.float32 and got.shape == (299, 299, 3)
  # Not quantised: resizing in uint8 would round every value.
  assert np.any(got != np.round(got))
  assert got.min() == 0 and got.max() == 255
  batch = resize.clean_fid_inputs(np.stack([image, image[::-1]]))
  np.testing.assert_array_equal(batch[0], (want - 128) / 128)
  np.testing.assert_array_equal(
      batch[1], (_clean_fid_resize(image[::-1].copy(), 299) - 128) / 128)


def test_clean_resize_refuses_what_it_cannot_take():
  with pytest.raises(InputError, match="uint8 RGB images"):
    resize.clean_resize(np.zeros((8, 8, 3), np.float32))
  with pytest.raises(InputError, match=r"\[N, H, W, 3\]"):
    resize.clean_fid_inputs(np.zeros((8, 8, 3), np.uint8))
