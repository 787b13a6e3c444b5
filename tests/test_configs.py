"""Configs load, are locked, and build the right model shapes."""

import flax
import jax
import numpy as np
import pytest

from configs import hart_0p7b_256, hart_0p7b_512, hart_0p7b_1024
from configs import tokenizer as tokenizer_config
from hart_jax import sharding
from hart_jax.interop import official_transformer as otr
from hart_jax.models.hart import config as hart_config
from hart_jax.stages import hart_stage
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


@pytest.mark.parametrize("module,res", [(hart_0p7b_256, 256),
                                        (hart_0p7b_512, 512),
                                        (hart_0p7b_1024, 1024)])
def test_curriculum_configs_train_the_released_model(module, res):
  config = module.get_config("data=folder:/x,init_from=out/prev,batch=512")
  assert config.stage == "hart" and config.data.image_size == res
  model = hart_config.from_config_dict(config.model)
  assert model.patch_nums[-1] * 16 == res and model.scan_layers
  assert config.train.init_from == "out/prev"
  assert config.optimizer.lr == pytest.approx(2e-4)  # 1e-4 per 256 images
  with pytest.raises(AttributeError):
    config.train.init_form = "typo"
  if module is not hart_0p7b_1024:
    with pytest.raises(ValueError, match="drop res="):
      module.get_config("res=1024")


def test_curriculum_carries_every_weight_between_schedules():
  """With the released flags no parameter depends on the schedule, so
  init_from 256 -> 512 -> 1024 copies every weight unchanged."""
  shapes = [jax.tree.map(lambda x: x.shape, otr.abstract_params(
      hart_config.from_config_dict(hart_0p7b_1024.model_config(res))))
            for res in (256, 512, 1024)]
  assert shapes[0] == shapes[1] == shapes[2]


def test_full_size_training_state_is_fsdp_sharded():
  """The 0.7B scanned params on an 8-device FSDP mesh (shapes only): the
  count is the release's, and each device holds about an eighth."""
  config = hart_0p7b_256.get_config()
  model = hart_config.from_config_dict(config.model)
  boxed = jax.eval_shape(lambda: otr.init_boxed(model, jax.random.key(0)))
  mesh = sharding.make_mesh(dict(config.mesh))
  assert dict(mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}
  shardings = sharding.param_shardings(boxed, mesh, config.rules)
  abstract = flax.core.meta.unbox(boxed)
  total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract))
  assert total == 732_399_168
  per_device = sum(
      int(np.prod(s.shard_shape(x.shape)))
      for x, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)))
  assert per_device < 1.05 * total / 8
  qkv = shardings["blocks"]["attn"]["qkv_proj"]["kernel"].spec
  assert tuple(qkv)[:2] == (None, "fsdp")


def test_missing_tokenizer_folder_is_one_clear_error():
  config = hart_0p7b_256.get_config()
  mesh = sharding.make_mesh(dict(data=1), devices=jax.devices()[:1])
  with pytest.raises(ValueError, match="config.tokenizer.folder is empty"):
    hart_stage.build(config, mesh, config.rules, jax.random.key(0))
