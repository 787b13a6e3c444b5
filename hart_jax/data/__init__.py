"""Data: image sources, the grain pipeline, and a tfds image-folder builder.

    source = make_source("fashion_mnist", split="train")
    ds = pipeline.make_dataset(source, image_size=32, batch_size=64, seed=0)

Names: "fashion_mnist", "gemojione", "synthetic", "folder:<path>",
"tfds:<name>[:<split>]". Keyword arguments go to the source's constructor.
"""

import logging

from hart_jax.data import sources
from hart_jax.data.debian import DatasetUnavailableError
from hart_jax.data.pipeline import global_batch, make_dataset
from hart_jax.data.sources import (FashionMnistSource, GemojioneSource,
                                   ImageFolderSource, SyntheticSource,
                                   TfdsSource)

__all__ = ["DatasetUnavailableError", "FashionMnistSource", "GemojioneSource",
           "ImageFolderSource", "SyntheticSource", "TfdsSource",
           "global_batch", "make_dataset", "make_source", "source_from_config",
           "sources"]

_NAMES = ("fashion_mnist", "gemojione", "synthetic", "folder:<path>",
          "tfds:<name>[:<split>]", "tokens:<token cache dir>")


def source_from_config(data_config):
  """The source a config's `data` section names (`source`, and the
  optional `source_kwargs`)."""
  return make_source(data_config.source,
                     **dict(data_config.get("source_kwargs", {})))


def make_source(name: str, **kwargs):
  """Builds a random-access source from its name.

  Args:
    name: "fashion_mnist", "gemojione", "synthetic", "folder:<path>",
      "tokens:<dir>" (a token cache, data/token_cache.py) or
      "tfds:<name>[:<split>]" (e.g. "tfds:hart_image_folder/pets_64px:train";
      the split defaults to "train" and may hold slices, "train[:90%]").
    **kwargs: passed to the source class (e.g. split=, cache_dir=,
      num_examples=, data_dir=).

  Returns:
    The source.

  Raises:
    ValueError: an unknown name.
  """
  if name == "fashion_mnist":
    return FashionMnistSource(**kwargs)
  if name == "gemojione":
    return GemojioneSource(**kwargs)
  if name == "synthetic":
    return SyntheticSource(**kwargs)
  if name.startswith("folder:") and len(name) > len("folder:"):
    return ImageFolderSource(name[len("folder:"):], **kwargs)
  if name.startswith("tokens:") and len(name) > len("tokens:"):
    from hart_jax.data.token_cache import TokenCacheSource  # pylint: disable=g-import-not-at-top
    if kwargs:
      # A config's source_kwargs describe its image source; switching it
      # to a cache with --config.data.source leaves them behind.
      logging.info("token cache source: ignoring source_kwargs %s",
                   sorted(kwargs))
    return TokenCacheSource(name[len("tokens:"):])
  if name.startswith("tfds:") and len(name) > len("tfds:"):
    # tfds names never contain ":", so the first one ends the name and the
    # rest is the split, which may contain its own (train[:10%]).
    tfds_name, _, split = name[len("tfds:"):].partition(":")
    if split:
      kwargs["split"] = split
    return TfdsSource(tfds_name, **kwargs)
  raise ValueError(f"unknown data source {name!r}; expected one of: "
                   f"{', '.join(_NAMES)}")
