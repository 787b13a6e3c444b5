"""Frechet Inception Distance: features, statistics, the distance.

FID (Heusel et al. 2017) fits a Gaussian to the Inception pool3 features
of each image set and measures

  d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)).

The statistics and the distance are computed on the host in float64
(numpy/scipy), as pytorch-fid and clean-fid do; features come from the
Flax Inception (`hart_jax.evals.inception`) jitted over a batch split
along the mesh's data axes. Reference statistics are `.npz` files with
`mu` [2048] and `sigma` [2048, 2048], the format pytorch-fid and
clean-fid write, so their published statistics can be used directly
(when computed with the same preprocessing, see `resize.py`).

FID is biased upward at small sample counts and noisy: below 10,000
images a warning says so; 50,000 is the usual count for reported numbers.
"""

import logging
import os
import warnings

import numpy as np
from scipy import linalg

from hart_jax.atomic_io import atomic_path
from hart_jax.errors import InputError
from hart_jax.evals import resize, sharded

MIN_IMAGES = 2
RELIABLE_IMAGES = 10_000


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6,
                     max_imaginary: float = 1e-3) -> float:
  """The Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

  Args:
    mu1: mean [D] of the first set's features.
    sigma1: covariance [D, D] of the first set.
    mu2: mean [D] of the second set.
    sigma2: covariance [D, D] of the second set.
    eps: added to both diagonals when sigma1 @ sigma2 is singular (its
      square root then is not finite), as pytorch-fid does.
    max_imaginary: the largest imaginary part allowed on the diagonal of
      the square root; rounding gives tiny ones, which are dropped.

  Returns:
    The squared Frechet distance (what is reported as FID), a float.

  Raises:
    InputError: shapes that do not match, or a square root whose
      imaginary part is not rounding noise (a sign of broken statistics,
      e.g. a covariance that is not positive semi-definite).
  """
  mu1, mu2 = (np.atleast_1d(np.asarray(m, np.float64)) for m in (mu1, mu2))
  sigma1, sigma2 = (np.atleast_2d(np.asarray(s, np.float64))
                    for s in (sigma1, sigma2))
  d = mu1.shape[0]
  if (mu1.ndim != 1 or mu2.shape != (d,) or sigma1.shape != (d, d)
      or sigma2.shape != (d, d)):
    raise InputError(
        f"FID statistics do not match: mu {list(mu1.shape)} and "
        f"{list(mu2.shape)}, sigma {list(sigma1.shape)} and "
        f"{list(sigma2.shape)} (want [D] and [D, D] for one D)")
  diff = mu1 - mu2
  with warnings.catch_warnings():
    # A singular product is handled (and logged once) just below.
    warnings.simplefilter("ignore", linalg.LinAlgWarning)
    covmean = linalg.sqrtm(sigma1 @ sigma2)
  if not np.isfinite(covmean).all():
    logging.warning("FID: sigma1 @ sigma2 is singular; adding %g to the "
                    "diagonal of both covariances", eps)
    offset = np.eye(d) * eps
    covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    imaginary = np.abs(np.diagonal(covmean).imag).max()
    if imaginary > max_imaginary:
      raise InputError(
          f"FID: the square root of sigma1 @ sigma2 has an imaginary part "
          f"of {imaginary:.3g} on its diagonal (more than rounding, "
          f"{max_imaginary:g}): a covariance is not positive semi-definite "
          "or the two were computed in different ways")
    covmean = covmean.real
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2)
               - 2.0 * np.trace(covmean))


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance (float64, ddof 1 as np.cov) of features [N, D].

  Raises:
    InputError: fewer than 2 images (no covariance exists), or features
      that are not [N, D].
  """
  features = np.asarray(features, np.float64)
  if features.ndim != 2:
    raise InputError(f"FID features must be [N, D], got "
                     f"{list(features.shape)}")
  n = features.shape[0]
  if n < MIN_IMAGES:
    raise InputError(f"FID needs at least {MIN_IMAGES} images, got {n}")
  if n < RELIABLE_IMAGES:
    logging.warning(
        "FID from %d images is unreliable: it is biased upward and noisy "
        "below %d images (50,000 is the usual count); compare it only "
        "with FIDs computed from the same number of images", n,
        RELIABLE_IMAGES)
  return features.mean(axis=0), np.cov(features, rowvar=False)


def save_statistics(path: str, mu, sigma) -> None:
  """Writes reference statistics as .npz (`mu`, `sigma`), atomically."""
  mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
  if mu.ndim != 1 or sigma.shape != (mu.shape[0],) * 2:
    raise InputError(f"FID statistics must be mu [D] and sigma [D, D], got "
                     f"{list(mu.shape)} and {list(sigma.shape)}")
  with atomic_path(path) as tmp:
    # A file object: np.savez would append ".npz" to the temp name.
    with open(tmp, "wb") as f:
      np.savez(f, mu=mu, sigma=sigma)


def load_statistics(path: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads `mu` and `sigma` from a .npz (ours, pytorch-fid's, clean-fid's).

  Raises:
    InputError: the file is missing, unreadable, or lacks / mis-shapes
      `mu` or `sigma`.
  """
  if not os.path.exists(path):
    raise InputError(f"FID reference statistics not found: {path} (an .npz "
                     "with mu [D] and sigma [D, D]; write one with "
                     "hart_jax.evals.fid.save_statistics)")
  try:
    with np.load(path, allow_pickle=False) as f:
      held = sorted(f.files)
      arrays = {k: f[k] for k in ("mu", "sigma") if k in held}
  except (OSError, ValueError) as e:
    raise InputError(f"{path}: cannot be read as FID statistics (.npz): "
                     f"{e}") from e
  missing = [k for k in ("mu", "sigma") if k not in arrays]
  if missing:
    raise InputError(f"{path}: no {' or '.join(missing)} in the FID "
                     f"statistics (it holds {held})")
  mu, sigma = (arrays[k].astype(np.float64) for k in ("mu", "sigma"))
  if mu.ndim != 1 or sigma.shape != (mu.shape[0],) * 2:
    raise InputError(f"{path}: mu {list(mu.shape)} and sigma "
                     f"{list(sigma.shape)} are not [D] and [D, D]")
  return mu, sigma


def inception_features(module, params, inputs, mesh=None,
                       batch_size: int = 64) -> np.ndarray:
  """Pool3 features of network-ready inputs, sharded over the mesh.

  Args:
    module: the `FIDInception` from `load_fid_inception`.
    params: its params.
    inputs: float [N, H, W, 3] in [-1, 1] (`resize.clean_fid_inputs` or
      `inception.pytorch_fid_inputs`), H and W >= 75.
    mesh: a `hart_jax.sharding.make_mesh` mesh (the batch is split over
      its data and fsdp axes), or None for the default device.
    batch_size: images per jitted call.

  Returns:
    float32 [N, 2048], the same on one device and on a mesh.
  """
  return sharded.run_batched(module, "__call__", params, [inputs], mesh,
                             batch_size)


def image_features(module, params, images, mesh=None,
                   batch_size: int = 64) -> np.ndarray:
  """clean-fid features of uint8 images [N, H, W, 3] (any H, W).

  Each chunk of `batch_size` images is resized on the host as clean-fid's
  "clean" mode does (`resize.clean_fid_inputs`), then run as in
  `inception_features`; `images` may be a memory-mapped array, since only
  one chunk is resized at a time.

  Returns:
    float32 [N, 2048].
  """
  return sharded.run_batched(module, "__call__", params, [images], mesh,
                             batch_size,
                             prepare=lambda x: [resize.clean_fid_inputs(x)])


def fid_from_features(features, mu_ref, sigma_ref) -> float:
  """FID of features [N, D] against reference statistics."""
  mu, sigma = feature_statistics(features)
  return frechet_distance(mu, sigma, mu_ref, sigma_ref)
