"""Fixtures for the data tests: a small image folder, the real datasets."""

import numpy as np
import pytest
from PIL import Image

from hart_jax.data import debian
from tests.helpers import unavailable


def random_image(rng, h, w, channels=3):
  return rng.integers(0, 256, (h, w, channels), dtype=np.uint8)


@pytest.fixture
def class_folder(tmp_path):
  """root/{cat,dog_face}/*.png: 3 + 2 RGB images of odd sizes, 1 RGBA."""
  rng = np.random.default_rng(0)
  root = tmp_path / "pets"
  images = {}
  for name, count in (("cat", 3), ("dog_face", 2)):
    (root / name).mkdir(parents=True)
    for j in range(count):
      array = random_image(rng, 12 + j, 10)
      path = root / name / f"{j}.png"
      Image.fromarray(array).save(path)
      images[f"{name}/{j}.png"] = array
  rgba = random_image(rng, 10, 10, 4)
  rgba[..., 3] = 0  # Fully transparent: must come out white.
  Image.fromarray(rgba, "RGBA").save(root / "cat" / "clear.png")
  images["cat/clear.png"] = np.full((10, 10, 3), 255, np.uint8)
  return root, images


@pytest.fixture(scope="session")
def fashion_mnist_dir():
  """The Fashion-MNIST files, downloaded once into the shared cache."""
  try:
    return debian.ensure_fashion_mnist()
  except debian.DatasetUnavailableError as e:
    unavailable(str(e))


@pytest.fixture(scope="session")
def gemojione_dir():
  try:
    return debian.ensure_gemojione()
  except debian.DatasetUnavailableError as e:
    unavailable(str(e))
