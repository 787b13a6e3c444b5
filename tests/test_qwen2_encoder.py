"""HART's Qwen2 text encoder: the Flax port against transformers, the
prompt path against a transcription of the official `encode_prompts`,
checkpoint layouts, sharding and the feature cache (tiny random model and
a BPE tokenizer trained here)."""

import hashlib
import json
import logging
import shutil
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
from tokenizers import (decoders, models, normalizers, pre_tokenizers,
                        processors, trainers)

from hart_jax import sharding
from hart_jax.errors import CheckpointError, ConfigError, InputError
from hart_jax.interop.state_dict_io import (read_safetensors,
                                            write_safetensors)
from hart_jax.text import feature_cache, qwen2
from hart_jax.text.encoders import make_text_encoder
from hart_jax.text.qwen2_prompt import SYSTEM_PROMPT
from tests.helpers import assert_close_scaled, require_module

MAX_LENGTH = 300  # HART's context_token: prompts are padded to it
HIDDEN = 64
PAD = "<|endoftext|>"
TEXT = dict(vocab_size=512, hidden_size=HIDDEN, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, rms_norm_eps=1e-6)
LONG = "a fluffy white cat on a sunny windowsill, " * 40  # > 300 tokens
PROMPTS = ["A cat sleeping", "A busy city street at dusk, glowing lamps.",
           "", LONG]


def _train_tokenizer(folder):
  """A small byte-level BPE in the shape of Qwen2's tokenizer.json (NFC,
  byte-level pieces, no BOS/EOS added), with the specials after the
  learned vocabulary as in Qwen2, so the pad id is not 0."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.post_processor = processors.ByteLevel(trim_offsets=False)
  trainer = trainers.BpeTrainer(
      vocab_size=400, show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(PROMPTS[:2] + [SYSTEM_PROMPT, LONG], trainer)
  tok.add_special_tokens([PAD, "<|im_start|>", "<|im_end|>"])
  tok.save(str(folder / "tokenizer.json"))


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
  """A tiny random transformers Qwen2Model saved with save_pretrained,
  plus tokenizer files; a twin folder pads on the left."""
  torch = require_module("torch", "pip install torch==2.13.0")
  transformers = require_module("transformers",
                                "pip install transformers==5.24.0")
  from tests.torch_ref import hart_prompt  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  model = transformers.Qwen2Model(transformers.Qwen2Config(
      **TEXT, rope_theta=1e6, max_position_embeddings=1024)).eval()
  # Init-scale weights (std 0.02) give near-uniform attention that hides
  # mask and position mistakes; these give O(1) logits instead.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(1 + 0.2 * torch.randn_like(p))
      elif name.endswith("bias"):
        p.copy_(0.5 * torch.randn_like(p))
      else:
        p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)
  folder = tmp_path_factory.mktemp("qwen2")
  model.save_pretrained(str(folder), safe_serialization=True)
  _train_tokenizer(folder)
  (folder / "tokenizer_config.json").write_text(json.dumps(dict(
      tokenizer_class="Qwen2Tokenizer", pad_token=PAD)))
  left = tmp_path_factory.mktemp("qwen2_left")
  for name in ("config.json", "model.safetensors", "tokenizer.json"):
    shutil.copy(folder / name, left / name)
  (left / "tokenizer_config.json").write_text(json.dumps(dict(
      tokenizer_class="Qwen2Tokenizer", pad_token=PAD,
      padding_side="left")))
  return types.SimpleNamespace(
      torch=torch, transformers=transformers, model=model, folder=folder,
      left=left, encode_prompts=hart_prompt.encode_prompts_ref)


def _encoder(folder, **options):
  return make_text_encoder(dict(kind="qwen2", qwen2=dict(
      path=str(folder), **options)), HIDDEN, MAX_LENGTH)


def test_system_prompt_is_the_official_one():
  # sha256 of `llm_system_prompt` evaluated from mit-han-lab/hart
  # hart/utils/constants.py @ e28a41f (705 characters).
  assert len(SYSTEM_PROMPT) == 705
  assert hashlib.sha256(SYSTEM_PROMPT.encode()).hexdigest() == (
      "424f7aa7b1119f8ed1e329140e5941dfe308183bea0af59041dad5527a9b8f20")


def test_flax_qwen2_equals_transformers(hf):
  torch = hf.torch
  config, params = qwen2.load_qwen2(hf.folder)
  assert config == qwen2.Qwen2Config(**TEXT, head_dim=16, rope_theta=1e6)
  ids = np.random.default_rng(0).integers(0, 512, (3, 12))
  mask = np.ones((3, 12), bool)
  mask[1, 7:] = False      # right padding
  mask[2, 3:6] = False     # a hole: masked keys inside the sequence
  with torch.no_grad():
    want = hf.model(torch.as_tensor(ids), attention_mask=torch.as_tensor(
        mask)).last_hidden_state.numpy()
  got = qwen2.Qwen2Model(config).apply({"params": params}, ids, mask)
  assert_close_scaled(got, want, 1e-4, "float32")
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  # bfloat16 params and compute: runs, stays bf16, close to float32.
  _, params16 = qwen2.load_qwen2(hf.folder, dtype=jnp.bfloat16)
  assert params16["embed_tokens"]["embedding"].dtype == jnp.bfloat16
  got16 = qwen2.Qwen2Model(config, jnp.bfloat16).apply(
      {"params": params16}, ids, mask)
  assert got16.dtype == jnp.bfloat16
  assert_close_scaled(got16, want, 5e-2, "bfloat16")


@pytest.mark.parametrize("use_system_prompt,side", [
    (True, "right"), (False, "right"), (True, "left")])
def test_prompt_path_equals_official_encode_prompts(hf, caplog,
                                                    use_system_prompt,
                                                    side):
  folder = hf.folder if side == "right" else hf.left
  # Without the system prompt an empty prompt has no visible key at all
  # (a degenerate softmax that torch and this port resolve differently).
  prompts = PROMPTS if use_system_prompt else PROMPTS[:2] + PROMPTS[3:]
  enc = _encoder(folder, use_system_prompt=use_system_prompt)
  with caplog.at_level(logging.WARNING):
    host = enc.host_inputs(prompts)
  feats, mask, pos = jax.jit(enc.encode)(enc.init_params(None), host)
  tokenizer = hf.transformers.PreTrainedTokenizerFast(
      tokenizer_file=str(folder / "tokenizer.json"), pad_token=PAD,
      padding_side=side)
  tokens, want_mask, want_pos, want = hf.encode_prompts(
      prompts, hf.model, tokenizer, MAX_LENGTH, SYSTEM_PROMPT,
      use_system_prompt)
  system = tokenizer(SYSTEM_PROMPT).input_ids if use_system_prompt else []
  assert host["text_ids"].shape == (len(prompts), len(system) + MAX_LENGTH)
  np.testing.assert_array_equal(host["text_ids"][:, :len(system)],
                                np.broadcast_to(system, (len(prompts),
                                                         len(system))))
  np.testing.assert_array_equal(host["text_ids"][:, len(system):], tokens)
  assert host["text_mask"][:, :len(system)].all()
  np.testing.assert_array_equal(mask, want_mask.numpy())
  np.testing.assert_array_equal(pos, want_pos.numpy())
  assert feats.shape == (len(prompts), MAX_LENGTH, HIDDEN)
  assert feats.dtype == jnp.float32
  assert_close_scaled(feats, want.numpy(), 1e-4, "features")
  # Padded positions keep ordinary states: HART reads them as tokens.
  assert np.abs(np.asarray(feats)[0][~np.asarray(mask[0])]).min() > 0
  dropped = len(tokenizer(LONG).input_ids) - MAX_LENGTH
  assert dropped > 0
  assert f"dropped {dropped} tokens" in caplog.text


def _vl_config(text: dict, nested: bool) -> dict:
  rope = dict(type="mrope", mrope_section=[2, 3, 3])
  if nested:  # transformers 5 writes the text fields under text_config
    return dict(model_type="qwen2_vl", vision_config=dict(depth=1),
                text_config=dict(text, model_type="qwen2_vl_text",
                                 rope_parameters=dict(rope, rope_theta=1e6)))
  return dict(text, model_type="qwen2_vl", rope_theta=1e6,
              rope_scaling=rope, vision_config=dict(depth=1))


def test_checkpoint_layouts_load_to_the_same_params(hf, tmp_path):
  config, want = qwen2.load_qwen2(hf.folder)
  state = read_safetensors(str(hf.folder / "model.safetensors"))
  extra = {"lm_head.weight": np.ones((512, HIDDEN), np.float32)}
  vision = np.ones((4, 4), np.float32)
  layouts = {
      "causal_lm": ({"model." + k: v for k, v in state.items()} | extra,
                    dict(TEXT, model_type="qwen2", rope_theta=1e6)),
      "vl_recent": ({"model.language_model." + k: v
                     for k, v in state.items()} | extra
                    | {"model.visual.blocks.0.attn.qkv.weight": vision},
                    _vl_config(TEXT, nested=True)),
      "vl_older": ({"model." + k: v for k, v in state.items()} | extra
                   | {"visual.patch_embed.proj.weight": vision},
                   _vl_config(TEXT, nested=False)),
  }
  for name, (weights, raw_config) in layouts.items():
    folder = tmp_path / name
    folder.mkdir()
    write_safetensors(str(folder / "model.safetensors"), weights)
    (folder / "config.json").write_text(json.dumps(raw_config))
    got_config, got = qwen2.load_qwen2(folder)
    assert got_config == config, name
    jax.tree.map(np.testing.assert_array_equal, got, want)
  # A sharded folder: two files and the index that maps keys to them.
  folder = tmp_path / "sharded"
  folder.mkdir()
  shutil.copy(hf.folder / "config.json", folder / "config.json")
  keys = sorted(state)
  weight_map = {k: f"model-0000{1 + i % 2}-of-00002.safetensors"
                for i, k in enumerate(keys)}
  for shard in set(weight_map.values()):
    write_safetensors(str(folder / shard), {
        k: state[k] for k in keys if weight_map[k] == shard})
  (folder / "model.safetensors.index.json").write_text(json.dumps(dict(
      metadata={}, weight_map=weight_map)))
  _, got = qwen2.load_qwen2(folder)
  jax.tree.map(np.testing.assert_array_equal, got, want)
  (folder / sorted(set(weight_map.values()))[1]).unlink()
  with pytest.raises(CheckpointError, match="shard model-00002-of-00002."
                     "safetensors is missing"):
    qwen2.load_qwen2(folder)


def test_bad_weights_and_config_fields_are_named(hf, tmp_path):
  config = qwen2.Qwen2Config.from_json(hf.folder / "config.json")
  state = read_safetensors(str(hf.folder / "model.safetensors"))
  del state["layers.1.mlp.up_proj.weight"]
  state["layers.0.self_attn.k_proj.bias"] = np.zeros(5, np.float32)
  with pytest.raises(CheckpointError, match=(
      r"layers.0.self_attn.k_proj.bias is \[5\] in the checkpoint, \[32\] "
      r"expected; missing layers.1.mlp.up_proj.weight \[128, 64\]")):
    qwen2.params_from_state(config, state, "here")
  raw = json.loads((hf.folder / "config.json").read_text())
  bad = {"missing": ({k: v for k, v in raw.items() if k != "hidden_size"},
                     "missing field hidden_size"),
         "typed": (dict(raw, num_hidden_layers="2"),
                   "field num_hidden_layers is '2', expected a positive "
                   "integer"),
         "nested": (_vl_config(dict(TEXT, hidden_size=64.5), nested=True),
                    "field text_config.hidden_size is 64.5"),
         "rope": (dict(raw, rope_parameters=dict(rope_type="yarn",
                                                 rope_theta=1.0)),
                  "rope_parameters type 'yarn' is not supported")}
  for name, (content, message) in bad.items():
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(content))
    with pytest.raises(CheckpointError, match=f"{name}.json: {message}"):
      qwen2.Qwen2Config.from_json(path)


def test_encoder_options_are_checked(hf, tmp_path):
  with pytest.raises(ConfigError, match=r"hidden_size 64 != the model's "
                     r"context_dim 32"):
    make_text_encoder(dict(kind="qwen2", qwen2=dict(path=str(hf.folder))),
                      32, MAX_LENGTH)
  with pytest.raises(ConfigError, match="dtype must be one of"):
    _encoder(hf.folder, dtype="float16")
  with pytest.raises(ConfigError, match="qwen2.path is empty"):
    _encoder("")
  with pytest.raises(ConfigError, match=r"max_length 77 != the model's "
                     r"context_token 300"):
    _encoder(hf.folder, max_length=77)
  assert _encoder(hf.folder, max_length=MAX_LENGTH).max_length == MAX_LENGTH
  shutil.copy(hf.folder / "config.json", tmp_path / "config.json")
  with pytest.raises(InputError, match="no tokenizer.json"):
    _encoder(tmp_path)


def test_released_size_shards_with_the_one_rule_table():
  """Qwen2-1.5B's shapes (HART's encoder) on an fsdp 4 x tensor 2 mesh:
  every large param is split 8 ways, from eval_shape alone."""
  config = qwen2.Qwen2Config(
      vocab_size=151936, hidden_size=1536, intermediate_size=8960,
      num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
      head_dim=128, rms_norm_eps=1e-6, rope_theta=1e6)
  boxed = qwen2.abstract_params(config)
  assert sharding.check_rules_cover(boxed) == []
  mesh = sharding.make_mesh(dict(data=1, fsdp=4, tensor=2))
  shapes = jax.tree.leaves(nn.unbox(boxed))
  specs = jax.tree.leaves(sharding.param_shardings(boxed, mesh))
  assert sum(int(np.prod(x.shape)) for x in shapes) == 1_543_714_304
  for x, s in zip(shapes, specs):
    if np.prod(x.shape) > 2**20:  # kernels and the embedding table
      assert np.prod(s.shard_shape(x.shape)) * 8 == np.prod(x.shape), (
          x.shape, s.spec)


@pytest.mark.parametrize("axes", [dict(fsdp=2), dict(tensor=2)])
def test_sharded_encoder_equals_one_device(hf, axes):
  enc = _encoder(hf.folder)
  params = enc.init_params(None)
  host = enc.host_inputs(PROMPTS)
  want = jax.jit(enc.encode)(params, host)
  mesh = sharding.make_mesh(dict(dict(data=1, fsdp=1, tensor=1), **axes),
                            jax.devices()[:2])
  placed = jax.device_put(params, sharding.param_shardings(
      enc.abstract_params(), mesh))
  for layer in ("q_proj", "k_proj"):
    kernel = placed["layers_0"]["self_attn"][layer]["kernel"]
    assert not kernel.sharding.is_fully_replicated, (layer, kernel.sharding)
  got = jax.jit(enc.encode)(placed, jax.device_put(
      host, sharding.batch_sharding(mesh)))
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
  for g, w in zip(got[1:], want[1:]):
    np.testing.assert_array_equal(g, w)


def test_feature_cache_of_qwen2_features(hf, tmp_path):
  enc = _encoder(hf.folder)
  path = str(tmp_path / "features.npz")
  captions = PROMPTS[:2] + ["a dog", PROMPTS[0], LONG]
  assert feature_cache.write_feature_cache(path, enc, captions,
                                           batch_size=4) == 4
  names, feats, mask = feature_cache.read_feature_cache(path)
  want, want_mask, _ = jax.jit(enc.encode)(enc.init_params(None),
                                           enc.host_inputs(names))
  np.testing.assert_allclose(feats, want, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(mask, want_mask)
  cached = make_text_encoder(dict(kind="cache", cache=dict(path=path)),
                             HIDDEN, MAX_LENGTH)
  got, got_mask, got_pos = cached.encode(None, cached.host_inputs(names))
  np.testing.assert_array_equal(got, feats)
  np.testing.assert_array_equal(got_pos, np.cumsum(got_mask, 1) - 1)
