"""Image files <-> arrays, with clear errors and the supported-size rule."""

import logging

import numpy as np
from PIL import Image, UnidentifiedImageError

from hart_jax.errors import InputError
from hart_jax.atomic_io import atomic_path


def load_rgb(path: str) -> np.ndarray:
  """Reads an image file as uint8 RGB [H, W, 3]; unreadable files raise."""
  try:
    with Image.open(path) as img:
      img.load()
      return np.asarray(img.convert("RGB"))
  except FileNotFoundError as e:
    raise InputError(f"image not found: {path}") from e
  except (UnidentifiedImageError, OSError, SyntaxError) as e:
    raise InputError(f"cannot read image {path}: not a valid image file "
                     f"({e})") from e


def fit_to_size(rgb: np.ndarray, supported: tuple[int, ...],
                path: str = "image") -> np.ndarray:
  """Center-crops to a square and resizes to the nearest supported side.

  The tokenizer only encodes square images whose side matches a scale
  schedule; anything else is adapted here, with a note in the log.
  """
  h, w = rgb.shape[:2]
  side = min(h, w)
  target = min(supported, key=lambda s: (abs(s - side), -s))
  if (h, w) == (target, target):
    return rgb
  if h != w:
    top, left = (h - side) // 2, (w - side) // 2
    rgb = rgb[top:top + side, left:left + side]
    logging.warning("%s is %dx%d: center-cropped to %dx%d", path, w, h,
                    side, side)
  if side != target:
    rgb = np.asarray(Image.fromarray(rgb).resize((target, target),
                                                 Image.BICUBIC))
    logging.warning("%s resized from %dpx to %dpx, the nearest supported "
                    "size (%s)", path, side, target,
                    ", ".join(f"{s}px" for s in supported))
  return rgb


def to_model_range(rgb: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 3] -> float32 in [-1, 1]."""
  return rgb.astype(np.float32) / 127.5 - 1.0


def from_model_range(x: np.ndarray) -> np.ndarray:
  """float in [-1, 1] -> uint8, rounding to nearest."""
  return np.clip(np.round((np.asarray(x) + 1.0) * 127.5), 0, 255).astype(
      np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
  """PSNR in dB between two uint8 images."""
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
  return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def save_png(path: str, rgb: np.ndarray) -> None:
  with atomic_path(path) as tmp:
    Image.fromarray(rgb).save(tmp, format="PNG")


def side_by_side(paths: list[str], gap: int = 4) -> Image.Image:
  """Images in a row (same height), for notebooks and sample grids."""
  images = [Image.fromarray(load_rgb(p)) for p in paths]
  height = max(im.height for im in images)
  width = sum(im.width for im in images) + gap * (len(images) - 1)
  canvas = Image.new("RGB", (width, height), "white")
  x = 0
  for im in images:
    canvas.paste(im, (x, 0))
    x += im.width + gap
  return canvas
