"""Test setup: 8 fake CPU devices and the golden-vector location.

XLA_FLAGS must be set before jax initialises its backends, hence at the
top of conftest (pytest imports it before any test module).
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = pathlib.Path(__file__).resolve().parents[1]
# One persistent XLA cache for the test process and the CLI subprocesses it
# starts: the same init/forward programs then compile once per run (and not
# at all on a second run), which is most of this suite's CPU time.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(REPO / ".cache" / "jax_tests"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

from tests.helpers import unavailable  # pylint: disable=g-import-not-at-top,wrong-import-position


def _golden_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("HART_GOLDEN_DIR",
                                     REPO.parent / "shared" / "golden"))


@pytest.fixture(scope="session")
def golden_dir() -> pathlib.Path:
  """../shared/golden: required in CI, skipped with a reason elsewhere."""
  path = _golden_dir()
  if not (path / "MANIFEST.json").exists():
    unavailable(f"golden vectors not found at {path}; set HART_GOLDEN_DIR "
                "to the shared/golden folder")
  return path
