"""A tfds builder that packs a local image folder into array_record files.

    builder = build_image_folder_dataset("~/pets", "~/tfds", image_size=64)
    source = TfdsSource("hart_image_folder/pets_64px", "train", "~/tfds")

Why: decoding and resizing thousands of files every epoch costs more host
CPU than reading fixed-size pixels, and array_record gives cheap random
access for grain's global shuffle. Images are stored as raw uint8 tensors
of one fixed size: tfds `Image` features need TensorFlow to encode, raw
`Tensor`/`ClassLabel`/`Text` features do not (../shared/environment.md).

The folder is read as `ImageFolderSource` reads it (class subfolders or flat
with caption sidecars); unreadable images are skipped and counted in the
log. Each (folder, size) pair is a builder config, so several sizes of one
folder live side by side under data_dir/hart_image_folder/<config>/1.0.0.
Reading needs no import of this module: tfds rebuilds the dataset from the
files' own metadata.
"""

import dataclasses
import logging
import os
import pathlib
import re

import numpy as np
import tensorflow_datasets as tfds

from hart_jax.errors import InputError
from hart_jax.data import sources
from hart_jax.data import transforms


@dataclasses.dataclass(eq=False)  # tfds's BuilderConfig is a plain dataclass.
class ImageFolderConfig(tfds.core.BuilderConfig):
  """Which folder, at which size.

  Attributes:
    folder: the image folder (see ImageFolderSource).
    image_size: side S of the stored [S, S, 3] uint8 images.
    resize: "bicubic" or "pad" (transforms.fit_square).
  """
  folder: str = ""
  image_size: int = 64
  resize: str = "bicubic"


class HartImageFolder(tfds.core.GeneratorBasedBuilder):
  """A local image folder as one "train" split of fixed-size images."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Raw uint8 images, ClassLabel label, caption."}
  # Nothing is downloaded, so there are no URL checksums. Left to tfds, the
  # lookup finds the checksums file beside this module with the
  # `importlib_resources` backport, which tfds does not install.
  url_infos = None

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    if config is None or not config.folder:
      raise InputError("HartImageFolder needs an ImageFolderConfig with a "
                       "folder; use build_image_folder_dataset()")
    s = config.image_size
    names = sources.ImageFolderSource(config.folder).class_names
    return tfds.core.DatasetInfo(
        builder=self,
        description=(f"Images from {config.folder}, {config.resize}-fitted "
                     f"to {s}x{s}."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(s, s, 3), dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=list(names)),
            "caption": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the folder is local.
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    config = self.builder_config
    source = sources.ImageFolderSource(config.folder)
    written = skipped = 0
    for i in range(len(source)):
      record = source[i]
      try:
        image = transforms.fit_square(transforms.to_rgb(record["image"]),
                                      config.image_size, config.resize)
      except Exception as e:  # pylint: disable=broad-except
        # Same policy as the pipeline: one bad file never stops the build.
        skipped += 1
        logging.warning("skipping unreadable image %s (%s: %s)",
                        record["path"], type(e).__name__, e)
        continue
      written += 1
      yield record["path"], {"image": image, "label": int(record["label"]),
                             "caption": record["caption"]}
    if skipped:
      logging.warning("%s: %d unreadable images skipped, %d written",
                      config.folder, skipped, written)
    if not written:
      raise InputError(f"no readable images in {config.folder}")


def config_name(folder, image_size: int) -> str:
  """"~/My Pets" at 64 -> "my_pets_64px" (tfds wants [a-z0-9_] names)."""
  base = pathlib.Path(folder).expanduser().resolve().name
  base = re.sub(r"[^a-z0-9_]+", "_", base.lower()).strip("_") or "images"
  return f"{base}_{image_size}px"


def build_image_folder_dataset(folder, data_dir, image_size: int, *,
                               name: str | None = None,
                               resize: str = "bicubic",
                               overwrite: bool = False) -> HartImageFolder:
  """Builds (or reuses) the array_record dataset of an image folder.

  Args:
    folder: the image folder.
    data_dir: the tfds data dir to write into.
    image_size: side S of the stored images.
    name: the config name; default `config_name(folder, image_size)`.
    resize: "bicubic" or "pad".
    overwrite: rebuild even if prepared already (tfds otherwise reuses a
      prepared dataset, and would miss images added to the folder since).

  Returns:
    The prepared builder. Read it with `builder.as_data_source("train")` or
    `TfdsSource(f"hart_image_folder/{name}", "train", data_dir)`.
  """
  if resize not in transforms.RESIZE_MODES:
    raise InputError(f"resize must be one of {transforms.RESIZE_MODES}")
  folder = os.fspath(pathlib.Path(folder).expanduser().resolve())
  config = ImageFolderConfig(name=name or config_name(folder, image_size),
                             folder=folder, image_size=image_size,
                             resize=resize)
  builder = HartImageFolder(config=config,
                            data_dir=os.path.expanduser(os.fspath(data_dir)),
                            file_format="array_record")
  mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if overwrite
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(download_mode=mode))
  return builder
