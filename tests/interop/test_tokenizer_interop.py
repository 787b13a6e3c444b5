"""Official tokenizer folder import/export: round trips and clear errors."""

import json
import os

import flax
import jax
import numpy as np
import pytest

from hart_jax.interop import official_tokenizer as ot
from hart_jax.interop import state_dict_io
from hart_jax.errors import CheckpointError, InputError
from hart_jax.models.tokenizer import config as tok_config
from tests.helpers import require_module

TINY = tok_config.TokenizerConfig(ch=32, ch_mult=(1, 1, 1), vocab_size=1024,
                                  v_patch_nums=(1, 2, 3, 4))


@pytest.fixture(scope="module")
def tiny_variables():
  return ot.init_variables(TINY, jax.random.key(0))


@pytest.fixture
def saved(tmp_path, tiny_variables):
  folder = tmp_path / "tok"
  ot.save_tokenizer(str(folder), TINY, tiny_variables)
  return folder


def _assert_same_tree(a, b):
  fa, fb = (flax.traverse_util.flatten_dict(x) for x in (a, b))
  assert set(fa) == set(fb)
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]),
                                  err_msg=str(k))


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_round_trip(tmp_path, tiny_variables, fmt):
  folder = tmp_path / fmt
  ot.save_tokenizer(str(folder), TINY, tiny_variables, weights_format=fmt)
  config, variables = ot.load_tokenizer(str(folder))
  assert config == TINY
  _assert_same_tree(variables, tiny_variables)


def test_exported_config_is_official(saved):
  raw = json.loads((saved / "config.json").read_text())
  assert raw["model_type"] == "hart_autoencoder_with_disc"
  assert raw["quantizer_type"] == "var_hybrid"
  assert raw["v_patch_nums"] == [1, 2, 3, 4]
  assert oct(os.stat(saved / "model.safetensors").st_mode)[-3:] != "600"


def test_buffer_shapes_follow_schedule(tiny_variables):
  state = ot.export_state_dict(TINY, tiny_variables)
  assert state["vae.quantize.ema_vocab_hit_SV"].shape == (4, 1024)
  assert state["disc.main.3.num_batches_tracked"].dtype == np.int64
  assert state["disc.main.3.num_batches_tracked"].shape == ()
  assert state["vae.encoder.conv_in.weight"].shape == (32, 3, 3, 3)


def test_unprefixed_keys_without_disc(tiny_variables):
  state = ot.export_state_dict(TINY, tiny_variables)
  bare = {k[len("vae."):]: v for k, v in state.items()
          if k.startswith("vae.")}
  variables = ot.import_state_dict(TINY, bare)
  _assert_same_tree(variables["vae"], tiny_variables["vae"])


@pytest.mark.parametrize("change,message", [
    (lambda s: s.pop("vae.decoder.conv_out.bias"),
     r"missing key\(s\): \['vae.decoder.conv_out.bias'\]"),
    (lambda s: s.update({"vae.encoder.extra.weight": np.zeros(3)}),
     r"unexpected key\(s\): \['vae.encoder.extra.weight'\]"),
    (lambda s: s.update({"vae.quantize.embedding.weight":
                         np.zeros((1024, 16), np.float32)}),
     r"vae.quantize.embedding.weight: checkpoint \[1024, 16\], expected "
     r"\[1024, 32\]"),
    (lambda s: s.update({"vae.quantize.ema_vocab_hit_SV":
                         np.zeros((10, 1024), np.float32)}),
     r"vae.quantize.ema_vocab_hit_SV: checkpoint \[10, 1024\]"),
    (lambda s: s.pop("disc.main.6.running_var"),
     r"missing key\(s\): \['disc.main.6.running_var'\]"),
])
def test_mismatched_keys_are_named(tiny_variables, change, message):
  state = ot.export_state_dict(TINY, tiny_variables)
  change(state)
  with pytest.raises(CheckpointError, match=message):
    ot.import_state_dict(TINY, state)


def test_corrupt_weights_are_clear_errors(saved):
  path = saved / "model.safetensors"
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(CheckpointError, match="truncated or corrupt"):
    ot.load_tokenizer(str(saved))
  path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
  with pytest.raises(CheckpointError, match="corrupt safetensors header"):
    ot.load_tokenizer(str(saved))
  path.write_bytes(b"abc")
  with pytest.raises(CheckpointError, match="too short"):
    ot.load_tokenizer(str(saved))


def test_bad_folders_and_configs(tmp_path, saved):
  with pytest.raises(CheckpointError, match="no config.json"):
    ot.load_tokenizer(str(tmp_path))
  (saved / "model.safetensors").rename(saved / "weights.old")
  with pytest.raises(CheckpointError, match="no weights file"):
    ot.load_tokenizer(str(saved))
  (saved / "weights.old").rename(saved / "model.safetensors")
  raw = json.loads((saved / "config.json").read_text())
  (saved / "config.json").write_text(json.dumps(dict(raw, chanels=3)))
  with pytest.raises(ValueError, match=r"unknown tokenizer config key\(s\): "
                     r"\['chanels'\]"):
    ot.load_tokenizer(str(saved))
  (saved / "config.json").write_text("{not json")
  with pytest.raises(ValueError, match="not valid JSON"):
    ot.load_tokenizer(str(saved))


def test_torch_pickles_load_weights_only(tmp_path):
  torch = require_module("torch", "pip install -e '.[test]'")

  marker = tmp_path / "pwned"

  class Payload:  # any non-tensor object: weights_only must refuse it
    def __reduce__(self):
      return (os.system, (f"touch {marker}",))

  path = tmp_path / "pytorch_model.bin"
  torch.save({"x": Payload()}, path)
  with pytest.raises(CheckpointError, match="refused to load") as info:
    state_dict_io.read_torch_bin(str(path))
  assert not marker.exists()
  # Our advice replaces torch's (which is to retry with weights_only=False).
  assert "weights_only=False" not in str(info.value)
  assert "safetensors" in str(info.value)


def test_failed_export_keeps_the_previous_folder(saved, tiny_variables,
                                                 monkeypatch):
  before = {p.name: p.read_bytes() for p in saved.iterdir()}

  def broken(path, tensors):
    with open(path, "wb") as f:
      f.write(b"partial")
    raise OSError("disk full")

  monkeypatch.setattr(state_dict_io, "write_safetensors", broken)
  changed = jax.tree.map(lambda x: x + 1, tiny_variables)
  with pytest.raises(InputError, match="disk full"):
    ot.save_tokenizer(str(saved), TINY, changed)
  after = {p.name: p.read_bytes() for p in saved.iterdir()}
  assert after == before
  assert not [p for p in saved.parent.iterdir() if ".tmp" in p.name]


def test_official_size_counts():
  """Param counts of the released tokenizer shape (hart_spec.md 2.1, 4b)."""
  shapes = ot.abstract_variables(tok_config.TokenizerConfig())
  count = lambda tree: sum(int(np.prod(x.shape))
                           for x in jax.tree.leaves(tree))
  vae_params = count(shapes["vae"]["params"])
  assert round(vae_params / 1e6, 2) == 108.95
  assert round(count(shapes["disc"]["params"]) / 1e6, 2) == 2.77
  keys = [k for k, *_ in ot._flat_entries(  # pylint: disable=protected-access
      tok_config.TokenizerConfig(), shapes)]
  assert len(keys) == len(set(keys)) == 346
  assert "vae.quantize.quant_resi.qresi_ls.3.weight" in keys
  assert "vae.encoder.down.4.attn.1.qkv.weight" in keys
  assert "vae.decoder.up.1.upsample.conv.weight" in keys


def test_non_official_shape_fields_survive_export(tmp_path):
  config = tok_config.TokenizerConfig(ch=16, ch_mult=(1, 2), norm_groups=8,
                                      vocab_size=64, v_patch_nums=(1, 2, 4))
  ot.save_tokenizer(str(tmp_path), config,
                    ot.init_variables(config, jax.random.key(0)))
  raw = json.loads((tmp_path / "config.json").read_text())
  assert raw["norm_groups"] == 8 and "num_res_blocks" not in raw
  loaded, _ = ot.load_tokenizer(str(tmp_path))
  assert loaded == config
