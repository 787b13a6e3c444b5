"""Configs load, are locked, and build the right model shapes."""

import jax
import numpy as np
import pytest

from configs import tokenizer as tokenizer_config
from hart_jax.interop import official_tokenizer as ot
from hart_jax.models.tokenizer import config as tok_config


def test_official_tokenizer_config_is_the_release():
  cfg = tok_config.from_config_dict(tokenizer_config.get_config().model)
  assert cfg == tok_config.TokenizerConfig()
  shapes = ot.abstract_variables(cfg)["vae"]["params"]
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  assert round(n / 1e6, 2) == 108.95


@pytest.mark.parametrize("res,side", [(256, 16), (512, 32), (1024, 64)])
def test_schedules(res, side):
  cfg = tok_config.from_config_dict(
      tokenizer_config.get_config(f"variant=tiny,res={res}").model)
  assert cfg.v_patch_nums[-1] == side and cfg.image_size == res


def test_unknown_args_and_keys_fail():
  with pytest.raises(ValueError, match="unknown config arg 'resolution'"):
    tokenizer_config.get_config("resolution=256")
  with pytest.raises(ValueError, match="res must be one of"):
    tokenizer_config.get_config("res=300")
  config = tokenizer_config.get_config()
  with pytest.raises(AttributeError):
    config.model.chanels = 3  # locked: typos do not create fields
  with pytest.raises(ValueError, match=r"unknown tokenizer config key\(s\)"):
    tok_config.from_config_dict(dict(config.model, chanels=3))
