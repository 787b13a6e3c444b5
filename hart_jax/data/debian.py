"""Real image sets that ship as Debian packages, fetched without root.

`apt-get download` + `dpkg -x` need no root and no dependency resolution
(ruby-gemojione would otherwise pull in Ruby), and the package registry is
the one source of real images reachable on every development machine and
CI runner (../shared/environment.md). Files are unpacked once into a cache
that all tests and runs share.
"""

import os
import pathlib
import shutil
import subprocess
import tempfile

from hart_jax.errors import InputError

FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_DIR = "usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = ("train-images-idx3-ubyte.gz",
                       "train-labels-idx1-ubyte.gz",
                       "t10k-images-idx3-ubyte.gz",
                       "t10k-labels-idx1-ubyte.gz")
GEMOJIONE_PACKAGE = "ruby-gemojione"
# The gem's folder carries its version (gemojione-3.3.0 in bookworm).
GEMOJIONE_GLOB = "usr/share/rubygems-integration/all/gems/gemojione-*"
GEMOJIONE_FILES = ("config/index.json", "assets/png")


class DatasetUnavailableError(InputError, RuntimeError):
  """A dataset's files are absent and could not be fetched."""


def default_cache_dir() -> pathlib.Path:
  """$HART_DATA_DIR, else ~/.cache/hart_jax/data."""
  env = os.environ.get("HART_DATA_DIR")
  if env:
    return pathlib.Path(env).expanduser()
  return pathlib.Path.home() / ".cache" / "hart_jax" / "data"


def ensure_fashion_mnist(cache_dir=None) -> pathlib.Path:
  """Returns the folder holding Fashion-MNIST's four idx .gz files.

  Looks in `cache_dir` (default `default_cache_dir()`), then in the system
  path the installed package uses; downloads the package otherwise.

  Args:
    cache_dir: where unpacked packages are kept.

  Returns:
    .../usr/share/datasets/fashion-mnist

  Raises:
    DatasetUnavailableError: not present and apt-get could not fetch it.
  """
  return _ensure_package(FASHION_MNIST_PACKAGE, FASHION_MNIST_DIR,
                         FASHION_MNIST_FILES, cache_dir)


def ensure_gemojione(cache_dir=None) -> pathlib.Path:
  """Returns the gemojione gem folder (config/index.json, assets/png/).

  Args:
    cache_dir: where unpacked packages are kept.

  Returns:
    .../usr/share/rubygems-integration/all/gems/gemojione-<version>

  Raises:
    DatasetUnavailableError: not present and apt-get could not fetch it.
  """
  return _ensure_package(GEMOJIONE_PACKAGE, GEMOJIONE_GLOB, GEMOJIONE_FILES,
                         cache_dir)


def _find(base: pathlib.Path, pattern: str, required) -> pathlib.Path | None:
  # Newest version last in sorted order; prefer it.
  for path in sorted(base.glob(pattern), reverse=True):
    if all((path / name).exists() for name in required):
      return path
  return None


def _ensure_package(package: str, pattern: str, required,
                    cache_dir) -> pathlib.Path:
  """Finds `pattern` under the cache or /, else apt-get downloads it."""
  cache_dir = pathlib.Path(cache_dir or default_cache_dir()).expanduser()
  target = cache_dir / package
  for base in (target, pathlib.Path("/")):
    found = _find(base, pattern, required)
    if found is not None:
      return found

  how = (f"Install it with `sudo apt-get update && sudo apt-get install -y "
         f"{package}`, or fetch the .deb elsewhere and run `dpkg -x "
         f"{package}_*.deb {target}`.")
  missing = [t for t in ("apt-get", "dpkg") if shutil.which(t) is None]
  if missing:
    raise DatasetUnavailableError(
        f"{package} is not in {target} or / and {', '.join(missing)} "
        f"is not available to download it (not a Debian/Ubuntu system?). "
        + how)
  cache_dir.mkdir(parents=True, exist_ok=True)
  # Unpack beside the target and rename at the end: a concurrent or killed
  # run never leaves (or reads) a half-extracted tree.
  work = pathlib.Path(tempfile.mkdtemp(prefix=f".{package}-", dir=cache_dir))
  try:
    _run(["apt-get", "download", package], work, package, how)
    debs = sorted(work.glob(f"{package}_*.deb"))
    if not debs:
      raise DatasetUnavailableError(
          f"`apt-get download {package}` produced no .deb in {work}. " + how)
    _run(["dpkg", "-x", str(debs[-1]), str(work / "root")], work, package,
         how)
    try:
      os.rename(work / "root", target)
    except OSError:
      if not target.exists():  # Not a lost race: a real failure.
        raise
  finally:
    shutil.rmtree(work, ignore_errors=True)
  found = _find(target, pattern, required)
  if found is None:
    raise DatasetUnavailableError(
        f"{package} was unpacked into {target} but {pattern}/"
        f"{{{', '.join(required)}}} is not there: the package layout "
        "changed? " + how)
  return found


def _run(cmd, cwd, package, how) -> None:
  try:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True,
                            timeout=600, check=False)
  except (OSError, subprocess.TimeoutExpired) as e:
    raise DatasetUnavailableError(
        f"`{' '.join(cmd)}` failed for {package}: {e}. " + how) from e
  if result.returncode != 0:
    # apt-get's last lines say why (no network, unknown package: run
    # `apt-get update`); keep them in the message, it is what users see.
    tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
    raise DatasetUnavailableError(
        f"`{' '.join(cmd)}` exited with {result.returncode}: {tail}\n" + how)
