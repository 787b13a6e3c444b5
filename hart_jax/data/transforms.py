"""Per-image host transforms: decode, alpha onto white, square resize.

Sources hand over either encoded file bytes (files on disk: decoding them
in the pipeline's worker threads/processes keeps sources cheap and lets a
corrupt file be skipped instead of crashing a read) or decoded uint8
arrays (datasets that already live in memory). `to_rgb` accepts both.
"""

import io

import numpy as np
from PIL import Image

RESIZE_MODES = ("bicubic", "pad")


def decode_image(data: bytes) -> np.ndarray:
  """Decodes encoded image bytes (PNG, JPEG, ...) to uint8 RGB [H, W, 3].

  Transparent pixels are composited onto white: emoji and icon sets are
  drawn for a light page, and a black background (what dropping alpha
  gives) turns dark outlines invisible.

  Args:
    data: the bytes of an image file.

  Returns:
    The decoded image.

  Raises:
    Whatever PIL raises for bytes it cannot decode (OSError, ValueError,
    SyntaxError, DecompressionBombError, ...); the pipeline counts those.
  """
  with Image.open(io.BytesIO(data)) as img:
    # load() forces the full decode: Image.open only parses the header, so
    # a truncated file would otherwise fail later, outside the try block.
    img.load()
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
      rgba = img.convert("RGBA")
      white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
      return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def to_rgb(image) -> np.ndarray:
  """Bytes or an array ([H, W], [H, W, 1|3|4]) -> uint8 RGB [H, W, 3]."""
  if isinstance(image, (bytes, bytearray, memoryview)):
    return decode_image(bytes(image))
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f"expected uint8 pixels, got {image.dtype}")
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise ValueError(f"expected an [H, W, C] image, got {image.shape}")
  if image.shape[-1] == 1:
    return np.repeat(image, 3, axis=-1)
  if image.shape[-1] == 4:
    alpha = image[..., 3:].astype(np.float32) / 255.0
    rgb = image[..., :3] * alpha + 255.0 * (1.0 - alpha)
    return np.round(rgb).astype(np.uint8)
  return image


def fit_square(image: np.ndarray, size: int,
               mode: str = "bicubic") -> np.ndarray:
  """Makes a uint8 RGB image exactly [size, size, 3].

  "bicubic": center-crop to the shorter side, then PIL bicubic resize in
  either direction. PIL widens the kernel when shrinking (antialiasing),
  like HART's torchvision `Resize(bicubic)` + `CenterCrop`.
  "pad": an image no larger than `size` is centered unchanged on a canvas
  of its own border color (the median edge pixel), so no pixel is
  resampled: Fashion-MNIST's 28px garments on black become 32px with a 2px
  black frame instead of a blurred upscale. Larger images fall back to
  "bicubic".

  Args:
    image: uint8 RGB [H, W, 3].
    size: the output side.
    mode: one of RESIZE_MODES.

  Returns:
    uint8 RGB [size, size, 3].
  """
  if mode not in RESIZE_MODES:
    raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got "
                     f"{mode!r}")
  h, w = image.shape[:2]
  if (h, w) == (size, size):
    return image
  if mode == "pad" and h <= size and w <= size:
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    fill = np.median(border, axis=0).astype(np.uint8)
    canvas = np.empty((size, size, 3), np.uint8)
    canvas[...] = fill
    top, left = (size - h) // 2, (size - w) // 2
    canvas[top:top + h, left:left + w] = image
    return canvas
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  image = image[top:top + side, left:left + side]
  if side == size:
    return np.ascontiguousarray(image)
  return np.asarray(Image.fromarray(image).resize((size, size),
                                                  Image.BICUBIC))


def to_model_range(images: np.ndarray) -> np.ndarray:
  """uint8 -> float32 in [-1, 1] (0 -> -1, 255 -> 1)."""
  return images.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1)
