"""clean-fid's "clean" preprocessing: uint8 images -> Inception inputs.

Parmar et al. ("On Aliased Resizing and Surprising Subtleties in GAN
Evaluation", CVPR 2022) showed that FID moves with the resize filter and
with quantising the resized image. Their "clean" mode, which this module
reproduces exactly (clean-fid `build_resizer("clean")`, i.e.
`make_resizer("PIL", quantize_after=False, "bicubic", (299, 299))`):

  1. each RGB channel of the uint8 image is converted to float32 and made
     a PIL mode-"F" image (no rounding: PIL resamples in float);
  2. resized to 299x299 with PIL's antialiased BICUBIC filter;
  3. clipped to [0, 255] (bicubic overshoots) and kept in float32, never
     re-quantised to uint8;
  4. the channels are stacked back to [299, 299, 3].

clean-fid then feeds the result to the TF Inception graph, which
normalises by (x - 128) / 128 (`InceptionV3W.forward`); `clean_fid_inputs`
does all of it. pytorch-fid instead scales [0, 1] data by 2x - 1, which is
(x - 127.5) / 127.5 in uint8 units: a 0.4% difference in the input that
moves FID a little, so keep reference statistics and generated features
on one convention.
"""

import numpy as np
from PIL import Image

from hart_jax.errors import InputError

CLEAN_SIZE = 299


def _check_uint8_rgb(images: np.ndarray, batched: bool) -> None:
  want = 4 if batched else 3
  if (images.dtype != np.uint8 or images.ndim != want
      or images.shape[-1] != 3):
    raise InputError(
        "clean-fid resizing takes uint8 RGB images "
        f"[{'N, ' if batched else ''}H, W, 3], got {images.dtype} "
        f"{list(images.shape)}")


def clean_resize(image: np.ndarray, size: int = CLEAN_SIZE) -> np.ndarray:
  """One image resized as clean-fid's "clean" mode does (steps 1-4 above).

  Args:
    image: uint8 [H, W, 3].
    size: output side (299 for FID).

  Returns:
    float32 [size, size, 3] in [0, 255], not quantised.
  """
  image = np.asarray(image)
  _check_uint8_rgb(image, batched=False)
  out = np.empty((size, size, 3), np.float32)
  for c in range(3):
    # A 2-D float32 array becomes a mode-"F" PIL image (clean-fid passes
    # mode="F" explicitly; Pillow deprecated that argument, same result).
    channel = Image.fromarray(image[:, :, c].astype(np.float32))
    resized = channel.resize((size, size), resample=Image.BICUBIC)
    out[:, :, c] = np.asarray(resized, np.float32).clip(0, 255)
  return out


def clean_fid_inputs(images: np.ndarray,
                     size: int = CLEAN_SIZE) -> np.ndarray:
  """uint8 [N, H, W, 3] -> float32 [N, size, size, 3] Inception inputs.

  Args:
    images: uint8 RGB images, any H and W.
    size: output side (299 for FID; other sizes only for tests).

  Returns:
    `clean_resize` of each image, then (x - 128) / 128 as the TF graph
    normalises: values in [-1, 0.9921875].
  """
  images = np.asarray(images)
  _check_uint8_rgb(images, batched=True)
  out = np.stack([clean_resize(im, size) for im in images]) if len(
      images) else np.zeros((0, size, size, 3), np.float32)
  return (out - 128.0) / 128.0
