"""Comparison helpers shared by the tests."""

import importlib
import os

import numpy as np
import pytest


def unavailable(reason: str):
  """Skips the test, or fails it in CI (CI=1), where every external input
  (goldens, torch, the MiniLM package, Debian datasets) must be present:
  a missing one there is a broken setup, not a reason to check less."""
  if os.environ.get("CI"):
    pytest.fail(reason)
  pytest.skip(reason)


def require_module(name: str, hint: str):
  """The imported module, or `unavailable(hint)`."""
  try:
    return importlib.import_module(name)
  except ImportError:
    unavailable(f"{name} is not installed: {hint}")


def assert_close_scaled(got, ref, rtol=1e-4, name=""):
  """|got - ref| <= rtol * max|ref| elementwise (golden README's rule).

  A plain elementwise relative test fails near zero; scaling by the array's
  magnitude is how the golden vectors are meant to be compared.
  """
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  assert got.shape == ref.shape, f"{name}: shape {got.shape} != {ref.shape}"
  scale = np.abs(ref).max()
  err = np.abs(got - ref).max()
  assert err <= rtol * scale, (
      f"{name}: max abs error {err:.3g} > {rtol} * {scale:.3g}")


def nchw(x):
  return np.transpose(np.asarray(x), (0, 3, 1, 2))


def nhwc(x):
  return np.transpose(np.asarray(x), (0, 2, 3, 1))
