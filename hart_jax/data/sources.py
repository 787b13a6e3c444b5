"""Random-access image sources (grain's RandomAccessDataSource protocol).

Every source maps an index to `{"image", "label": int32, "caption": str}`.
In-memory datasets (Fashion-MNIST, synthetic, tfds) give `image` as a
decoded uint8 array; file-backed ones (gemojione, image folders) give the
file's encoded bytes, decoded later by the pipeline (`transforms.to_rgb`):
decoding there runs in parallel worker threads/processes, and a file that
fails to decode is skipped and counted there instead of crashing a read.

Sources hold only paths until first read, so they pickle cheaply to
grain's worker processes.
"""

import gzip
import json
import logging
import os
import pathlib

import numpy as np

from hart_jax.errors import InputError
from hart_jax.data.debian import (DatasetUnavailableError, ensure_fashion_mnist,
                                  ensure_gemojione)
from hart_jax.data.synthetic import SyntheticSource

# SyntheticSource lives in its own module; listed here so that every source
# can be found in this one.
__all__ = ["DatasetUnavailableError", "FashionMnistSource", "GemojioneSource",
           "ImageFolderSource", "SyntheticSource", "TfdsSource",
           "ensure_fashion_mnist", "ensure_gemojione", "photo_caption"]

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress",
                         "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
# Sorted, and fixed here rather than read from index.json, so label ids stay
# stable across package versions.
GEMOJIONE_CATEGORIES = ("activity", "extras", "flags", "food", "modifier",
                        "nature", "objects", "people", "symbols", "travel")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


def photo_caption(name: str) -> str:
  """"Ankle boot" -> "a photo of an ankle boot"."""
  name = name.lower()
  article = "an" if name[:1] in "aeiou" else "a"
  return f"a photo of {article} {name}"


def _read_idx(path: pathlib.Path) -> np.ndarray:
  """Reads an idx file (big-endian magic, dims, then uint8 data)."""
  with gzip.open(path, "rb") as f:
    data = f.read()
  ndim = data[3]
  dims = np.frombuffer(data, ">u4", count=ndim, offset=4)
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


class FashionMnistSource:
  """Fashion-MNIST: 28x28 grayscale as RGB, 10 classes, photo captions.

  Args:
    split: "train" (60k), "test" (10k) or "all" (70k: train, then test).
    path: the folder with the idx .gz files; default: `ensure_fashion_mnist
      (cache_dir)`, which downloads the Debian package when needed.
    cache_dir: see `debian.default_cache_dir`.
  """

  def __init__(self, split: str = "train", path=None, cache_dir=None):
    if split not in ("train", "test", "all"):
      raise InputError(f"split must be train, test or all, got {split!r}")
    self.split = split
    self.path = pathlib.Path(path or ensure_fashion_mnist(cache_dir))
    self._images = self._labels = None
    self._len = {"train": 60000, "test": 10000, "all": 70000}[split]

  def _load(self):
    parts = {"train": ["train"], "test": ["t10k"],
             "all": ["train", "t10k"]}[self.split]
    images = [_read_idx(self.path / f"{p}-images-idx3-ubyte.gz")
              for p in parts]
    labels = [_read_idx(self.path / f"{p}-labels-idx1-ubyte.gz")
              for p in parts]
    self._images = np.concatenate(images)
    self._labels = np.concatenate(labels).astype(np.int32)
    if len(self._images) != self._len or len(self._labels) != self._len:
      raise InputError(f"{self.path}: expected {self._len} examples, found "
                       f"{len(self._images)} images, {len(self._labels)} "
                       "labels")

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> dict:
    if self._images is None:
      self._load()
    label = self._labels[index]
    gray = self._images[index]
    return {"image": np.repeat(gray[..., None], 3, axis=-1),
            "label": label,
            "caption": photo_caption(FASHION_MNIST_CLASSES[label])}

  def __getstate__(self):
    # Workers reload the 55 MB of pixels themselves instead of receiving
    # them pickled.
    return {**self.__dict__, "_images": None, "_labels": None}

  def __repr__(self) -> str:
    return f"FashionMnistSource(split={self.split!r}, path='{self.path}')"


class GemojioneSource:
  """The gemojione emoji set: 64x64 RGBA PNGs (encoded bytes), 10 categories.

  Caption = the emoji's name ("hundred points symbol"); label = index of its
  category in GEMOJIONE_CATEGORIES. Records are sorted by code point.

  Args:
    path: the gem folder; default `ensure_gemojione(cache_dir)`.
    cache_dir: see `debian.default_cache_dir`.
  """

  def __init__(self, path=None, cache_dir=None):
    self.path = pathlib.Path(path or ensure_gemojione(cache_dir))
    with open(self.path / "config" / "index.json", encoding="utf-8") as f:
      index = json.load(f)
    entries = sorted(index.values(), key=lambda e: e["unicode"])
    self._files = [f"{e['unicode']}.png" for e in entries]
    self._labels = [GEMOJIONE_CATEGORIES.index(e["category"])
                    for e in entries]
    self._captions = [e["name"] for e in entries]

  def __len__(self) -> int:
    return len(self._files)

  def __getitem__(self, index: int) -> dict:
    return {"image": _read_bytes(self.path / "assets" / "png" /
                                 self._files[index]),
            "label": np.int32(self._labels[index]),
            "caption": self._captions[index]}

  def __repr__(self) -> str:
    return f"GemojioneSource(path='{self.path}', {len(self)} emoji)"


def _read_bytes(path) -> bytes:
  """File bytes, or b"" (a decode failure, counted later) if unreadable."""
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    logging.warning("cannot read %s: %s", path, e)
    return b""


def _is_image(path: pathlib.Path) -> bool:
  return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


class ImageFolderSource:
  """Images in a folder: class subfolders, or flat with caption sidecars.

  If `root` has subfolders holding images, each subfolder (recursively) is
  a class: label = its index among the sorted subfolder names, caption =
  its name with "_" as spaces. Otherwise the images directly in `root` form
  one class (label 0). Either way a sidecar `name.txt` beside `name.png`
  overrides the caption; in flat folders a missing sidecar falls back to
  the file stem. `image` is the file's encoded bytes.
  """

  def __init__(self, root):
    self.root = pathlib.Path(root).expanduser()
    if not self.root.is_dir():
      raise InputError(f"image folder not found: {self.root}")
    subdirs = sorted(d for d in self.root.iterdir() if d.is_dir()
                     and any(_is_image(p) for p in d.rglob("*")))
    if subdirs:
      self.class_names = tuple(d.name for d in subdirs)
      self._files = [(p, i) for i, d in enumerate(subdirs)
                     for p in sorted(d.rglob("*")) if _is_image(p)]
    else:
      self.class_names = (self.root.name,)
      self._files = [(p, 0) for p in sorted(self.root.iterdir())
                     if _is_image(p)]
    self.flat = not subdirs
    if not self._files:
      raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in "
                       f"{self.root}")

  def __len__(self) -> int:
    return len(self._files)

  def caption(self, index: int) -> str:
    path, label = self._files[index]
    sidecar = path.with_suffix(".txt")
    if sidecar.is_file():
      try:
        return sidecar.read_text(encoding="utf-8").strip()
      except (OSError, UnicodeDecodeError) as e:
        logging.warning("ignoring unreadable caption %s: %s", sidecar, e)
    name = path.stem if self.flat else self.class_names[label]
    return name.replace("_", " ")

  def __getitem__(self, index: int) -> dict:
    path, label = self._files[index]
    return {"image": _read_bytes(path), "label": np.int32(label),
            "caption": self.caption(index),
            "path": os.fspath(path.relative_to(self.root))}

  def __repr__(self) -> str:
    return (f"ImageFolderSource('{self.root}', {len(self)} images, "
            f"{len(self.class_names)} classes)")


class TfdsSource:
  """A prepared tfds dataset read through `tfds.data_source` (array_record).

  No TensorFlow needed: features are decoded to numpy. Images may be uint8
  tensors ([H, W, C]) or encoded bytes. The caption is `caption_key` when
  the dataset has it, else a photo caption of the ClassLabel name, else "".

  Args:
    name: tfds name, e.g. "hart_image_folder/flowers_64px" or "mnist".
    split: split spec, e.g. "train" or "train[:90%]".
    data_dir: the tfds data dir (default: tfds's own).
    image_key, label_key, caption_key: feature names to read.
  """

  def __init__(self, name: str, split: str = "train", data_dir=None,
               image_key: str = "image", label_key: str = "label",
               caption_key: str = "caption"):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    try:
      self._source = tfds.data_source(name, split=split, data_dir=data_dir)
    except Exception as e:  # pylint: disable=broad-except
      # tfds raises a zoo of types here (DatasetNotFoundError, RuntimeError,
      # AssertionError); none tells the user that nothing is downloaded.
      raise DatasetUnavailableError(
          f"cannot open tfds dataset {name!r} split {split!r} in "
          f"{data_dir or 'the default data dir'}: {e}. Datasets must be "
          "prepared beforehand (no tfds download works offline here); see "
          "hart_jax.data.image_folder_builder for local image folders."
      ) from e
    self.name, self.split = name, split
    self._keys = (image_key, label_key, caption_key)
    features = self._source.dataset_info.features
    label = features[label_key] if label_key in features else None
    self.class_names = tuple(getattr(label, "names", None) or ())

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    image_key, label_key, caption_key = self._keys
    record = self._source[index]
    label = int(record.get(label_key, 0))
    caption = record.get(caption_key)
    if caption is None:
      caption = (photo_caption(self.class_names[label])
                 if self.class_names else "")
    elif isinstance(caption, bytes):
      caption = caption.decode("utf-8")
    return {"image": record[image_key], "label": np.int32(label),
            "caption": str(caption)}

  def __repr__(self) -> str:
    return f"TfdsSource({self.name!r}, split={self.split!r}, {len(self)})"
