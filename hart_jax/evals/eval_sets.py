"""What an evaluation generates and compares against.

Prompts: a text file (one per line), or the MJHQ-30K `meta_data.json`
({id: {"prompt": ..., "category": ...}}) as it is distributed. Class-
conditional models get class ids cycling over their classes. Reference
images: a folder, searched recursively (MJHQ-30K's one folder per
category works as it is), or precomputed FID statistics (.npz).

Generated images are written to `<out>/images/<key>.png` in fixed chunks
of the batch size, so an interrupted evaluation resumes where it stopped
and makes the same images as an uninterrupted one.
"""

import dataclasses
import json
import logging
import os
from typing import Any, Callable, Optional, Sequence

import numpy as np
from PIL import Image

from hart_jax import atomic_io
from hart_jax import image_io
from hart_jax.errors import ConfigError, InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
RECORD = "generation.json"


@dataclasses.dataclass(frozen=True)
class Item:
  """One image to generate: its file key and its prompt or class."""
  key: str
  prompt: Optional[str] = None
  class_id: Optional[int] = None
  category: Optional[str] = None


def read_prompts(path: str) -> list[Item]:
  """Items of a prompts file (text lines, or MJHQ-30K meta_data.json)."""
  if not os.path.isfile(path):
    raise InputError(f"--prompts {path}: no such file")
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except UnicodeDecodeError as e:
    raise InputError(f"--prompts {path}: not a UTF-8 text file") from e
  if path.endswith(".json"):
    try:
      raw = json.loads(text)
    except json.JSONDecodeError as e:
      raise InputError(f"--prompts {path}: not valid JSON ({e})") from e
    if not isinstance(raw, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("prompt"), str)
        for v in raw.values()):
      raise InputError(f"--prompts {path}: expected MJHQ-30K's layout, "
                       '{"<id>": {"prompt": "...", "category": "..."}}')
    items = [Item(str(k), v["prompt"], category=v.get("category"))
             for k, v in sorted(raw.items())]
  else:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    items = [Item(f"{i:06d}", p) for i, p in enumerate(lines)]
  if not items:
    raise InputError(f"--prompts {path} holds no prompts")
  return items


def class_items(num_classes: int, count: int) -> list[Item]:
  """`count` items cycling over the classes (balanced)."""
  return [Item(f"{i:06d}", class_id=i % num_classes) for i in range(count)]


def reference_paths(folder: str) -> list[str]:
  if not os.path.isdir(folder):
    raise InputError(f"--reference_images {folder}: no such folder")
  paths = sorted(os.path.join(root, name)
                 for root, _, names in os.walk(folder) for name in names
                 if name.lower().endswith(IMAGE_EXTENSIONS))
  if not paths:
    raise InputError(f"--reference_images {folder} holds no images "
                     f"({', '.join(IMAGE_EXTENSIONS)})")
  return paths


def load_images(paths: Sequence[str], what: str) -> np.ndarray:
  """uint8 [N, S, S, 3]; images of another size than the most common one
  are resized to it (bicubic), with a note."""
  images = [image_io.load_rgb(p) for p in paths]
  shapes = [im.shape[:2] for im in images]
  common = max(set(shapes), key=shapes.count)
  odd = [i for i, s in enumerate(shapes) if s != common]
  if odd:
    logging.warning("%d of %d %s have another size than %dx%d and were "
                    "resized to it (bicubic)", len(odd), len(images), what,
                    common[1], common[0])
    for i in odd:
      images[i] = np.asarray(Image.fromarray(images[i]).resize(
          (common[1], common[0]), Image.BICUBIC))
  return np.stack(images)


def generate(pipe, items: Sequence[Item], out: str, settings: dict[str, Any],
             batch_size: int, resume: bool,
             progress: Optional[Callable[[int], None]] = None
             ) -> list[str]:
  """Writes a PNG per item that is not there yet; returns all paths.

  Chunk c (items [c*B, (c+1)*B)) always uses the pipeline's chunk c key,
  so a resumed run's images equal an uninterrupted run's.
  """
  folder = os.path.join(out, "images")
  record = dict(settings, checkpoint=pipe.model.source,
                batch_size=batch_size, items=len(items))
  record_path = os.path.join(out, RECORD)
  if os.path.exists(record_path):
    with open(record_path, encoding="utf-8") as f:
      previous = json.load(f)
    if previous != json.loads(json.dumps(record)) and not resume:
      raise InputError(
          f"--out {out} holds images of a different evaluation (its "
          f"{RECORD} differs: checkpoint, settings or item count); use "
          "another --out, or --resume to keep them and go on with these "
          "settings")
  elif os.path.isdir(folder) and os.listdir(folder) and not resume:
    raise InputError(f"--out {out} already holds images of another run; "
                     "use another --out, or --resume to keep them")
  atomic_io.atomic_write_json(record_path, record)
  paths = [os.path.join(folder, f"{item.key}.png") for item in items]
  for chunk, start in enumerate(range(0, len(items), batch_size)):
    part = list(items[start:start + batch_size])
    written = [os.path.exists(p) for p in paths[start:start + len(part)]]
    if all(written):
      continue
    if part[0].class_id is not None:
      images = pipe(class_ids=[i.class_id for i in part], output="np",
                    batch_size=batch_size, first_chunk=chunk, **settings)
    else:
      images = pipe([i.prompt for i in part], output="np",
                    batch_size=batch_size, first_chunk=chunk, **settings)
    for path, image, done in zip(paths[start:], images, written):
      if not done:
        image_io.save_png(path, image)
    if progress:
      progress(len(part))
  return paths


def check_settings(num_images: Optional[int], batch_size: int) -> None:
  if num_images is not None and num_images < 1:
    raise ConfigError(f"--num_images must be >= 1, got {num_images}")
  if batch_size < 1:
    raise ConfigError(f"--batch_size must be >= 1, got {batch_size}")
