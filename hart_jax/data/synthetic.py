"""A procedural image source with learnable structure, for tests and benchmarks.

Each example is one colored shape on a light background. The class decides
the shape; position, size, colors come from a per-example generator seeded
by (seed, index), so any example is reproducible on its own, in any order,
on any host, without storing anything. The caption names color and shape,
which gives a text-conditioned model something to learn too.
"""

import numpy as np

from hart_jax.errors import ConfigError

SHAPES = ("circle", "square", "triangle", "diamond", "ring", "plus",
          "cross", "striped square", "checkered square", "half disc")
COLORS = (("red", (215, 40, 40)), ("green", (40, 160, 60)),
          ("blue", (40, 80, 215)), ("yellow", (235, 195, 30)),
          ("purple", (135, 60, 175)), ("orange", (245, 135, 25)),
          ("cyan", (30, 185, 200)), ("black", (25, 25, 25)))


def _mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Pixels inside `shape`; u, v are scaled so the shape spans ~[-1, 1]."""
  box = np.maximum(np.abs(u), np.abs(v))
  if shape == "circle":
    return u * u + v * v <= 1.0
  if shape == "square":
    return box <= 0.8
  if shape == "triangle":  # Apex up.
    return (v <= 0.8) & (2.0 * np.abs(u) <= v + 1.0)
  if shape == "diamond":
    return np.abs(u) + np.abs(v) <= 1.0
  if shape == "ring":
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.3)
  if shape == "plus":
    return (box <= 1.0) & ((np.abs(u) <= 0.3) | (np.abs(v) <= 0.3))
  if shape == "cross":
    return (box <= 0.9) & ((np.abs(u - v) <= 0.4) | (np.abs(u + v) <= 0.4))
  if shape == "striped square":
    return (box <= 0.9) & (np.floor((v + 1.0) * 2.5) % 2 == 0)
  if shape == "checkered square":
    return (box <= 0.9) & (
        (np.floor((u + 1.0) * 2) + np.floor((v + 1.0) * 2)) % 2 == 0)
  if shape == "half disc":
    return (u * u + v * v <= 1.0) & (v >= 0.0)
  raise ConfigError(f"unknown shape {shape!r}")


class SyntheticSource:
  """Deterministic procedural images (a grain RandomAccessDataSource).

  Records are `{"image": uint8 [S, S, 3], "label": int32, "caption": str}`,
  already decoded at `image_size`. With `num_classes` <= 10 the class is
  the shape and the color is random; above that (up to 80) the class fixes
  both shape (`label % 10`) and color (`label // 10`).
  """

  def __init__(self, num_examples: int = 1024, image_size: int = 32,
               num_classes: int = 10, seed: int = 0):
    if not 1 <= num_classes <= len(SHAPES) * len(COLORS):
      raise ConfigError(f"num_classes must be in [1, "
                        f"{len(SHAPES) * len(COLORS)}], got {num_classes}")
    if image_size < 8:
      raise ConfigError(f"image_size must be >= 8, got {image_size}")
    self.num_examples = num_examples
    self.image_size = image_size
    self.num_classes = num_classes
    self.seed = seed

  def __len__(self) -> int:
    return self.num_examples

  def __repr__(self) -> str:
    return (f"SyntheticSource(num_examples={self.num_examples}, image_size="
            f"{self.image_size}, num_classes={self.num_classes}, "
            f"seed={self.seed})")

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    if not 0 <= index < self.num_examples:
      raise IndexError(f"index {index} out of range [0, {self.num_examples})")
    rng = np.random.default_rng((self.seed, index))
    label = int(rng.integers(self.num_classes))
    shape = SHAPES[label % len(SHAPES)]
    if self.num_classes > len(SHAPES):
      color_name, color = COLORS[label // len(SHAPES)]
    else:
      color_name, color = COLORS[rng.integers(len(COLORS))]
    s = self.image_size
    radius = rng.uniform(0.2, 0.32) * s
    cx, cy = rng.uniform(radius, s - radius, size=2)
    background = rng.integers(215, 256, size=3)
    image = np.empty((s, s, 3), np.uint8)
    image[...] = background
    # Every shape fits in |u|, |v| <= 1: only its bounding box is tested,
    # with broadcast row/column coordinates (pixel centers), which makes
    # large images several times cheaper than a full coordinate grid.
    x0, y0 = (max(int(np.floor(c - radius)), 0) for c in (cx, cy))
    x1, y1 = (min(int(np.ceil(c + radius)) + 1, s) for c in (cx, cy))
    u = (np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx) / radius
    v = (np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy) / radius
    inside = np.broadcast_to(_mask(shape, u, v), (y1 - y0, x1 - x0))
    image[y0:y1, x0:x1][inside] = color
    return {"image": image, "label": np.int32(label),
            "caption": f"{'an' if color_name[0] in 'aeiou' else 'a'} "
                       f"{color_name} {shape}"}
