"""Official llm/ folders: round trips, buffers and named errors."""

import json

import jax
import numpy as np
import pytest

from configs import hart_tiny
from hart_jax.interop import official_transformer as otr
from hart_jax.errors import CheckpointError
from hart_jax.interop.state_dict_io import read_torch_bin
from hart_jax.models.hart.config import from_config_dict

CONFIG = from_config_dict(hart_tiny.get_config().model)


@pytest.fixture(scope="module")
def params():
  return otr.init_params(CONFIG, jax.random.key(0))


def test_folder_round_trip_with_ema(tmp_path, params):
  ema = jax.tree.map(lambda x: x * 0.5, params)
  otr.save_transformer(str(tmp_path / "llm"), CONFIG, params, ema)
  raw = json.loads((tmp_path / "llm" / "config.json").read_text())
  assert raw["model_type"] == "hart_transformer_t2i"
  assert raw["patch_nums"] == [1, 2, 3, 4]
  # ema_model.bin is what the official sampler loads; it is preferred.
  config, loaded = otr.load_transformer(str(tmp_path / "llm"))
  assert config == CONFIG
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(ema)):
    np.testing.assert_array_equal(a, b)
  _, raw_params = otr.load_transformer(str(tmp_path / "llm"),
                                       "model.safetensors")
  for a, b in zip(jax.tree.leaves(raw_params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  state = read_torch_bin(str(tmp_path / "llm" / "ema_model.bin"))
  assert state["lvl_1L"].dtype == np.int64
  assert state["lvl_1L"].tolist() == [[0] * 8 + [1] * 4 + [2] * 9 +
                                      [3] * 16]
  bias = state["attn_bias_for_masking"][0, 0]
  assert bias[8, 7] == 0 and bias[7, 8] == -np.inf
  np.testing.assert_array_equal(state["blocks.1.attn.zero_k_bias"], 0)


def test_mismatches_are_named(params):
  state = otr.export_state_dict(CONFIG, params)
  broken = dict(state)
  del broken["blocks.1.ffn.up_proj.weight"]
  broken["blocks.0.attn.extra"] = np.zeros(3)
  broken["head.weight"] = np.zeros((1024, 64), np.float32)
  with pytest.raises(CheckpointError) as e:
    otr.import_state_dict(CONFIG, broken)
  msg = str(e.value)
  assert "missing key(s): ['blocks.1.ffn.up_proj.weight']" in msg
  assert "unexpected key(s): ['blocks.0.attn.extra']" in msg
  assert "head.weight: checkpoint [1024, 64], expected [1024, 128]" in msg


def test_wrong_schedule_is_caught_by_buffers(params):
  state = otr.export_state_dict(CONFIG, params)
  other = CONFIG.replace(patch_nums=(1, 2, 3, 5))
  with pytest.raises(CheckpointError, match="lvl_1L: checkpoint"):
    otr.import_state_dict(other, state)


def test_missing_folder_pieces(tmp_path):
  with pytest.raises(CheckpointError, match="no config.json"):
    otr.load_transformer(str(tmp_path))
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(CheckpointError, match="no weights file"):
    otr.load_transformer(str(tmp_path))


def test_class_conditional_export_round_trips(tmp_path):
  """The official code has a C2I config class but no model: the export is
  typed hart_transformer_c2i with its num_classes, and loads back here."""
  config = from_config_dict(hart_tiny.get_config(
      "class_conditional=true").model)
  params = otr.init_params(config, jax.random.key(1))
  otr.save_transformer(str(tmp_path / "llm"), config, params,
                       write_ema_bin=False)
  raw = json.loads((tmp_path / "llm" / "config.json").read_text())
  assert raw["model_type"] == "hart_transformer_c2i"
  assert raw["num_classes"] == 10
  loaded_config, loaded = otr.load_transformer(str(tmp_path / "llm"))
  assert loaded_config == config
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("edit,fragment", [
    (dict(depth="2"), "field 'depth' is \"2\", expected an integer"),
    (dict(patch_nums=[1, "2"]), "field 'patch_nums' is [1, \"2\"], "
     "expected a list of integers"),
    (dict(attn_l2_norm=1), "field 'attn_l2_norm' is 1, expected true or "
     "false"),
    (dict(num_heads=3), "embed_dim 128 is not divisible by num_heads 3"),
    (dict(model_type="llama"), "model_type 'llama' is not a HART"),
    (dict(num_classes=10), "unknown transformer config key(s): "
     "['num_classes']"),
])
def test_config_json_fields_are_checked(tmp_path, params, edit, fragment):
  otr.save_transformer(str(tmp_path), CONFIG, params, write_ema_bin=False)
  raw = json.loads((tmp_path / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps(dict(raw, **edit)))
  with pytest.raises(CheckpointError) as info:
    otr.load_transformer(str(tmp_path))
  assert fragment in str(info.value)
  assert str(tmp_path / "config.json") in str(info.value)
