"""Fine-tuning from an official folder: full, frozen parts and LoRA.

Frozen weights stay bit-identical; a LoRA run exports base + scale * B A
(recomputed here in torch layout from the stored adapters); a partial
run's optimizer holds moments for its trained tree only, and its compiled
step needs less memory (the AOT log); mistakes are named.
"""

import re

import flax
import numpy as np
import pytest
import torch

from configs import hart_0p7b_finetune
from hart_jax import checkpointing
from hart_jax import finetune
from hart_jax.errors import CheckpointError, ConfigError
from hart_jax.interop.official_configs import load_transformer_config
from hart_jax.interop.state_dict_io import read_state_dict
from hart_jax.models.hart.config import HartConfig
from tests.finetune_runs import runs

NORMS = ("ln_wo_grad.weight", "context_norm.weight", "decoder_norm.weight")


def _official_ema():
  return read_state_dict(str(runs().official / "llm" / "ema_model.bin"))


def test_frozen_weights_do_not_move():
  r, base = runs(), _official_ema()
  for name in ("model.safetensors", "ema_model.bin"):
    got = read_state_dict(str(r.exports["frozen"] / "llm" / name))
    assert sorted(got) == sorted(base)
    moved = {k for k in base if not np.array_equal(base[k], got[k])}
    frozen = {k for k in moved if not (k.startswith(("diffloss.",
                                                     "blocks.1."))
                                       or k.endswith(NORMS))}
    assert not frozen, f"{name}: frozen weights moved: {sorted(frozen)}"
    # Not vacuous: the trained parts did move, the last block included.
    assert any(k.startswith("blocks.1.attn") for k in moved), name
    assert any(k.startswith("diffloss.") for k in moved), name


def test_lora_export_is_base_plus_scaled_b_a():
  r, base = runs(), _official_ema()
  _, stored = checkpointing.read_stored_items(str(r.workdirs["lora"]),
                                           ("params", "ema_params"))
  assert set(stored["params"]) == {"lora"}   # only adapters train
  width = base["blocks.0.attn.proj.weight"].shape[0]
  kernel = {"q": "attn.qkv_proj", "v": "attn.qkv_proj",
            "out": "attn.proj", "down": "ffn.down_proj"}
  rows = {"q": slice(0, width), "v": slice(2 * width, 3 * width)}
  for key, name in (("params", "model.safetensors"),
                    ("ema_params", "ema_model.bin")):
    adapters = flax.traverse_util.flatten_dict(stored[key]["lora"])
    places = sorted({p[:-1] for p in adapters})
    assert {p[-1] for p in places} == set(kernel)
    want = {k: v.astype(np.float64) for k, v in base.items()}
    for place in places:
      block, target = int(place[0].split("_")[1]), place[-1]
      a = adapters[place + ("a",)].astype(np.float64)   # [in, r]
      b = adapters[place + ("b",)].astype(np.float64)   # [r, out]
      assert np.abs(b).max() > 0, place                  # they trained
      weight = want[f"blocks.{block}.{kernel[target]}.weight"]
      # torch layout: W [out, in] + (alpha / r) * B [out, r] @ A [r, in]
      weight[rows.get(target, slice(None))] += 2.0 * (b.T @ a.T)
    got = read_state_dict(str(r.exports["lora"] / "llm" / name))
    for k, value in base.items():
      if k.endswith(("qkv_proj.weight", "attn.proj.weight",
                     "down_proj.weight")):
        # float32 on hart_jax's side, float64 here: a few ulps.
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=5e-7,
                                   err_msg=f"{name}: {k}")
        assert not np.array_equal(got[k], value), k
      else:
        np.testing.assert_array_equal(got[k], value, err_msg=k)


def _compile_memory(workdir) -> dict:
  text = (workdir / "train.log").read_text()
  match = re.search(r"args ([\d.]+) MiB, outputs ([\d.]+) MiB, temps "
                    r"([\d.]+) MiB", text)
  return dict(zip(("args", "outputs", "temps"), map(float, match.groups())))


def test_partial_runs_hold_moments_of_their_trained_tree_only():
  r = runs()
  opt_bytes, memory = {}, {}
  for mode, workdir in r.workdirs.items():
    _, items = checkpointing.read_stored_items(str(workdir),
                                            ("params", "opt_state"))
    n_opt, b_opt = finetune.tree_bytes(items["opt_state"])
    n_par, b_par = finetune.tree_bytes(items["params"])
    # AdamW: two moments per trained leaf, plus a few step counters.
    assert n_opt - 2 * n_par <= 4 and 0 <= b_opt - 2 * b_par <= 16, mode
    opt_bytes[mode] = b_opt
    memory[mode] = _compile_memory(workdir)
  print("optimizer state bytes:", opt_bytes, "compiled step MiB:", memory)
  assert opt_bytes["frozen"] < 0.6 * opt_bytes["full"]
  assert opt_bytes["lora"] < 0.2 * opt_bytes["full"]
  for mode in ("frozen", "lora"):
    assert memory[mode]["args"] < memory["full"]["args"], memory
    assert memory[mode]["outputs"] < memory["full"]["outputs"], memory


def test_init_from_names_the_first_mismatched_parameter():
  official = runs().official
  ours = load_transformer_config(str(official / "llm" / "config.json"),
                                 vocab_size=256)
  other = ours.replace(embed_dim=128)
  with pytest.raises(CheckpointError) as info:
    checkpointing.check_official_source(str(official), other)
  assert ("blocks_0/attn/proj/bias is [64] there but [128] in this model"
          in str(info.value))
  assert str(official) in str(info.value)
  checkpointing.check_official_source(str(official), ours.replace(
      scan_layers=True, patch_nums=(1, 2, 3, 4, 8)))   # fits: no error


def test_init_from_checks_the_weights_key_set_early(tmp_path):
  official = runs().official
  for sub in ("llm", "tokenizer"):
    (tmp_path / sub).mkdir()
    for f in (official / sub).iterdir():
      (tmp_path / sub / f.name).write_bytes(f.read_bytes())
  state = {k: torch.from_numpy(v) for k, v in _official_ema().items()
           if k != "blocks.1.ffn.up_proj.weight"}
  torch.save(state, tmp_path / "llm" / "ema_model.bin")
  config = load_transformer_config(str(official / "llm" / "config.json"),
                                   vocab_size=256)
  with pytest.raises(CheckpointError, match=re.escape(
      "ema_model.bin does not match its config.json: missing key(s): "
      "['blocks.1.ffn.up_proj.weight']")):
    checkpointing.check_official_source(str(tmp_path), config)


@pytest.mark.parametrize("section,fragment", [
    (dict(lora_rank=4, lora_targets="q+qkv"),
     "finetune.lora_targets: unknown target 'qkv'; allowed: q, k, v, out, "
     "gate, up, down, fc1, fc2"),
    (dict(train_only="head+decoder"), "unknown part 'decoder'"),
    (dict(train_only="last_blocks:x"), "needs a block count >= 1"),
    (dict(lora_rank=4, lora_targets=""), "needs finetune.lora_targets"),
    (dict(lora_rank=-1), "lora_rank must be >= 0"),
])
def test_finetune_mistakes_are_named(section, fragment):
  config = hart_0p7b_finetune.get_config()
  with config.unlocked():
    config.finetune.update(section)
  with pytest.raises(ConfigError) as info:
    finetune.spec_from_config(config)
  assert fragment in str(info.value)


def test_targets_and_depth_must_exist_in_the_model():
  gpt2 = HartConfig(depth=2, embed_dim=64, num_heads=2)
  with pytest.raises(ConfigError, match="'gate' is not in this model's gpt2"):
    finetune.Partition(finetune.FinetuneSpec(
        lora_rank=2, lora_targets=("gate",)), gpt2)
  with pytest.raises(ConfigError, match="last_blocks:3 exceeds"):
    finetune.Partition(finetune.FinetuneSpec(last_blocks=3), gpt2)


def test_finetune_config_modes():
  full = hart_0p7b_finetune.get_config("hart=rel/,data=folder:/x")
  assert full.train.init_from == "rel/"
  assert full.tokenizer.folder == "rel/tokenizer"
  assert not finetune.spec_from_config(full).partial
  assert full.optimizer.lr == 1e-5 and full.data.image_size == 1024
  lora = hart_0p7b_finetune.get_config(
      "hart=rel,res=512,lora_rank=16,lora_targets=q+k+v+out+gate+up+down,"
      "train_only=diffusion_head,text_encoder=qwen")
  spec = finetune.spec_from_config(lora)
  assert spec.lora_rank == 16 and spec.parts == ("diffusion_head",)
  assert lora.optimizer.lr == 1e-4 and lora.optimizer.weight_decay == 0
  assert lora.data.image_size == 512 and lora.model.patch_nums[-1] == 32
  assert lora.text_encoder.kind == "qwen2"
