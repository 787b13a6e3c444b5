r"""Text features of every caption of a config's data, computed once.

  python -m hart_jax.cache_text_features --config=tiny:cond=text \
      --out=DIR/features.npz

runs the config's in-step text encoder (`text_encoder.kind`: bytes, bert,
qwen2) over the unique captions of `config.data` and writes the cache
(hart_jax/text/feature_cache.py); train on it with
`--config.text_encoder.kind=cache --config.text_encoder.cache.path=F`.
"""

import os

from absl import flags

from hart_jax import cli
from hart_jax.errors import ConfigError, InputError

_CONFIG = cli.define_config("config", help_text="A text-conditioned HART "
                            "training config.")
_OUT = flags.DEFINE_string("out", None, "The .npz file to write.",
                           required=True)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256,
                                   "Captions per encoder call.")


def main(argv):
  del argv
  from hart_jax.data import source_from_config  # pylint: disable=g-import-not-at-top
  from hart_jax.models.hart.config import from_config_dict  # pylint: disable=g-import-not-at-top
  from hart_jax.text import feature_cache  # pylint: disable=g-import-not-at-top
  from hart_jax.text.encoders import make_text_encoder  # pylint: disable=g-import-not-at-top
  config, out = _CONFIG.value, _OUT.value
  if config.get("stage") != "hart" or "model" not in config:
    raise ConfigError(f"--config={_CONFIG.spec} is not a HART-stage "
                      "training config (it has no model to encode for)")
  model = from_config_dict(config.model)
  if model.num_classes or "text_encoder" not in config:
    raise ConfigError(
        f"--config={_CONFIG.spec} is class-conditional (model.num_classes="
        f"{model.num_classes}): it has no text encoder; use a text config "
        "such as tiny:cond=text")
  if config.text_encoder.kind == "cache":
    raise ConfigError("the config's text_encoder.kind is 'cache': set "
                      "--config.text_encoder.kind to the encoder that should "
                      "compute the features")
  if _BATCH_SIZE.value < 1:
    raise ConfigError(f"--batch_size must be >= 1, got {_BATCH_SIZE.value}")
  if os.path.isdir(out):
    raise InputError(f"--out {out} is a directory; give a .npz file path")
  encoder = make_text_encoder(config.text_encoder, model.context_dim,
                              model.context_token)
  source = source_from_config(config.data)
  n = feature_cache.write_feature_cache(
      out, encoder, feature_cache.captions_of(source),
      batch_size=_BATCH_SIZE.value)
  print(f"wrote features of {n} unique captions to {os.path.abspath(out)}")


if __name__ == "__main__":
  cli.run(main)
