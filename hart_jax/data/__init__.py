"""Data: image sources, the grain pipeline, and a tfds image-folder builder.

    source = make_source("fashion_mnist", split="train")
    ds = pipeline.make_dataset(source, image_size=32, batch_size=64, seed=0)

Names: "fashion_mnist", "gemojione", "synthetic", "folder:<path>",
"tfds:<name>[:<split>]". Keyword arguments go to the source's constructor.
"""

import inspect
import logging

from hart_jax.data import sources
from hart_jax.data.debian import DatasetUnavailableError
from hart_jax.data.pipeline import global_batch, make_dataset
from hart_jax.data.sources import (FashionMnistSource, GemojioneSource,
                                   ImageFolderSource, SyntheticSource,
                                   TfdsSource)
from hart_jax.errors import ConfigError

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


def _accepted(cls, kwargs: dict, name: str) -> dict:
  """The kwargs `cls` takes. A config's source_kwargs describe its own
  source; switching the source with --config.data.source leaves them
  behind, so those the new source does not take are dropped, with a
  warning naming them."""
  params = inspect.signature(cls).parameters
  if any(p.kind == p.VAR_KEYWORD for p in params.values()):
    return kwargs
  dropped = sorted(set(kwargs) - set(params))
  if dropped:
    logging.warning("data.source_kwargs %s do not apply to the %r source; "
                    "ignored", dropped, name)
  return {k: v for k, v in kwargs.items() if k in params}


def make_source(name: str, **kwargs):
  """Builds a random-access source from its name.

  Args:
    name: "fashion_mnist", "gemojione", "synthetic", "folder:<path>",
      "tokens:<dir>" (a token cache, data/token_cache.py) or
      "tfds:<name>[:<split>]" (e.g. "tfds:hart_image_folder/pets_64px:train";
      the split defaults to "train" and may hold slices, "train[:90%]").
    **kwargs: passed to the source class (e.g. split=, cache_dir=,
      num_examples=, data_dir=); those it does not take are dropped with a
      warning.

  Returns:
    The source.

  Raises:
    ConfigError: an unknown name.
    InputError: a folder or cache that is missing or unusable.
  """
  simple = {"fashion_mnist": FashionMnistSource, "gemojione": GemojioneSource,
            "synthetic": SyntheticSource}
  if name in simple:
    return simple[name](**_accepted(simple[name], kwargs, name))
  if name.startswith("folder:") and len(name) > len("folder:"):
    return ImageFolderSource(name[len("folder:"):],
                             **_accepted(ImageFolderSource, kwargs, name))
  if name.startswith("tokens:") and len(name) > len("tokens:"):
    from hart_jax.data.token_cache import TokenCacheSource  # pylint: disable=g-import-not-at-top
    return TokenCacheSource(name[len("tokens:"):],
                            **_accepted(TokenCacheSource, kwargs, name))
  if name.startswith("tfds:") and len(name) > len("tfds:"):
    # tfds names never contain ":", so the first one ends the name and the
    # rest is the split, which may contain its own (train[:10%]).
    tfds_name, _, split = name[len("tfds:"):].partition(":")
    kwargs = _accepted(TfdsSource, kwargs, name)
    if split:
      kwargs["split"] = split
    return TfdsSource(tfds_name, **kwargs)
  raise ConfigError(f"unknown data source {name!r}; expected one of: "
                    f"{', '.join(_NAMES)}")
