r"""Tokenizer outputs of every example of a config's data, computed once.

  python -m hart_jax.cache_tokens --config=X --out=DIR

encodes `config.data` (source order, one epoch, no augmentation) with the
config's frozen tokenizer and writes a token cache folder
(hart_jax/data/token_cache.py); train on it with
`--config.data.source=tokens:DIR`.
"""

import os

from absl import flags
import numpy as np

from hart_jax import cli
from hart_jax import run_checks
from hart_jax.errors import ConfigError, InputError

_CONFIG = cli.define_config("config", help_text="A HART training config.")
_OUT = flags.DEFINE_string("out", None, "The cache folder to write.",
                           required=True)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64,
                                   "Images per tokenizer call.")
_FREST_DTYPE = flags.DEFINE_enum(
    "frest_dtype", "float32", ["float32", "float16"],
    "Storage of the continuous latent (float16 halves it).")


def main(argv):
  del argv
  from hart_jax.data import source_from_config  # pylint: disable=g-import-not-at-top
  from hart_jax.data import token_cache  # pylint: disable=g-import-not-at-top
  from hart_jax.data.pipeline import make_dataset  # pylint: disable=g-import-not-at-top
  from hart_jax.interop.official_tokenizer import load_frozen_tokenizer  # pylint: disable=g-import-not-at-top
  from hart_jax.models.hart.config import from_config_dict  # pylint: disable=g-import-not-at-top
  from hart_jax.models.tokenizer import HybridTokenizer  # pylint: disable=g-import-not-at-top
  config, out = _CONFIG.value, _OUT.value
  if config.get("stage") != "hart" or "tokenizer" not in config:
    raise ConfigError(f"--config={_CONFIG.spec} is not a HART-stage "
                      "training config (it names no tokenizer)")
  if _BATCH_SIZE.value < 1:
    raise ConfigError(f"--batch_size must be >= 1, got {_BATCH_SIZE.value}")
  if os.path.exists(out) and not os.path.isdir(out):
    raise InputError(f"--out {out} is a file; give a folder path")
  if config.data.source.startswith("tokens:"):
    raise ConfigError("the config's data.source is already a token cache")
  run_checks.check_stage_paths(config)
  model = from_config_dict(config.model)
  tok_config, tok_vars = load_frozen_tokenizer(config)
  source = source_from_config(config.data)
  dataset = make_dataset(source, image_size=config.data.image_size,
                         batch_size=_BATCH_SIZE.value, seed=0,
                         shard_index=0, shard_count=1, shuffle=False,
                         num_epochs=1, drop_remainder=False)
  n = token_cache.write_token_cache(
      out, HybridTokenizer(tok_config), tok_vars, iter(dataset),
      model.patch_nums, np.dtype(_FREST_DTYPE.value))
  print(f"wrote tokens of {n} examples to {os.path.abspath(out)}")


if __name__ == "__main__":
  cli.run(main)
