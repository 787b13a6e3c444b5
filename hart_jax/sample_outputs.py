"""What `python -m hart_jax.sample` reads and writes: the prompts file,
the output folder (one PNG per image named after its prompt, grid.png,
settings.json), each file written atomically."""

import json
import os
import re
import tempfile

import jax
import numpy as np

import hart_jax
from hart_jax import atomic_io
from hart_jax import image_io
from hart_jax.errors import InputError
from hart_jax.stages.common import image_grid


def check_out_dir(out: str) -> None:
  """`out` is, or can become, a writable folder (nothing is created)."""
  if not out:
    raise InputError("--out is empty")
  path = os.path.abspath(out)
  if os.path.exists(path) and not os.path.isdir(path):
    raise InputError(f"--out {out} is a file, not a folder")
  probe = path
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  try:
    with tempfile.TemporaryFile(dir=probe):
      pass
  except OSError as e:
    raise InputError(f"--out {out} is not writable ({probe}: "
                     f"{e.strerror})") from e


def read_prompts_file(path: str) -> list[str]:
  """Non-empty lines of a UTF-8 text file."""
  try:
    with open(path, encoding="utf-8") as f:
      prompts = [line.strip() for line in f if line.strip()]
  except FileNotFoundError as e:
    raise InputError(f"--prompts_file {path}: no such file") from e
  except (UnicodeDecodeError, IsADirectoryError) as e:
    raise InputError(f"--prompts_file {path}: not a UTF-8 text file") from e
  if not prompts:
    raise InputError(f"--prompts_file {path} holds no prompts (one per "
                     "line)")
  return prompts


def file_names(names: list[str]) -> list[str]:
  """A PNG name per prompt: lower-case words joined by '-', at most 60
  characters, '-2', '-3', ... for repeats."""
  seen: dict[str, int] = {}
  out = []
  for name in names:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60]
    slug = slug.rstrip("-") or "image"
    seen[slug] = seen.get(slug, 0) + 1
    out.append(f"{slug}.png" if seen[slug] == 1
               else f"{slug}-{seen[slug]}.png")
  return out


def write_outputs(out: str, images: np.ndarray, names: list[str],
                  settings: dict) -> list[str]:
  """Writes the images, grid.png and settings.json; returns the images'
  paths."""
  os.makedirs(out, exist_ok=True)
  paths = []
  for image, name in zip(images, file_names(names)):
    path = os.path.join(out, name)
    image_io.save_png(path, image)
    paths.append(path)
  grid = image_grid(images.astype(np.float32) / 255.0,
                    cols=min(len(images), 8))
  image_io.save_png(os.path.join(out, "grid.png"), grid)
  record = dict(settings, images=[os.path.basename(p) for p in paths],
                hart_jax_version=hart_jax.__version__,
                jax_version=jax.__version__,
                device=jax.devices()[0].device_kind)
  atomic_io.atomic_write_bytes(
      os.path.join(out, "settings.json"),
      (json.dumps(record, indent=2, default=str) + "\n").encode())
  return paths
