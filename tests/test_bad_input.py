"""Every user mistake: exit status 2, one line naming it, no traceback, and
nothing written or changed.

Each case runs an entry point as a user would (`python -m hart_jax.X`,
from a working directory outside the repository) in a fresh folder whose
files are hashed before and after.
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import struct
from typing import Callable, Optional

import jax
import numpy as np
import pytest

from configs import tiny
from hart_jax.interop import official_tokenizer
from hart_jax.models.tokenizer.config import TokenizerConfig
from hart_jax.interop import import_run
from hart_jax.interop.state_dict_io import read_safetensors, write_safetensors
from tests import cli_runner
from tests import finetune_runs
from tests import tiny_folders
from tests.helpers import require_module

REPO = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Case:
  name: str
  args: list[str]          # {tmp} is the case's folder
  fragment: str            # must appear in the last stderr line
  setup: Optional[Callable[[pathlib.Path, pathlib.Path], None]] = None
  devices: int = 1


def _tokenizer(src, tmp):
  (tmp / "tok").mkdir()
  for f in src.iterdir():
    (tmp / "tok" / f.name).write_bytes(f.read_bytes())


def _png(tmp, name="in.png"):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp / name)


def _with_tokenizer(extra=None):
  def setup(src, tmp):
    _tokenizer(src, tmp)
    _png(tmp)
    if extra:
      extra(tmp)
  return setup


def _evil_bin(tmp):
  import torch  # pylint: disable=g-import-not-at-top

  class Payload:
    def __reduce__(self):
      return (os.system, (f"touch {tmp}/pwned",))

  (tmp / "tok" / "model.safetensors").unlink()
  torch.save({"x": Payload()}, tmp / "tok" / "pytorch_model.bin")


def _bad_header(tmp):
  header = json.dumps({"vae.quant_conv.bias": {"dtype": "F32",
                                               "shape": "32",
                                               "data_offsets": [0, 128]}})
  raw = header.encode() + b" " * (-len(header) % 8)
  (tmp / "tok" / "model.safetensors").write_bytes(
      struct.pack("<Q", len(raw)) + raw + bytes(128))


def _config_field(key, value):
  def edit(tmp):
    path = tmp / "tok" / "config.json"
    raw = json.loads(path.read_text())
    raw[key] = value
    path.write_text(json.dumps(raw))
  return edit


def _write(name, data=b"x"):
  def setup(src, tmp):
    del src
    (tmp / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp / name).write_bytes(data)
  return setup


def _mkdir(name):
  def setup(src, tmp):
    del src
    (tmp / name).mkdir(parents=True)
  return setup


def _official(num_classes=0, qwen2_hidden=None):
  """hart/{tokenizer,llm} (context_dim 32) and maybe a Qwen2 folder."""
  def setup(src, tmp):
    del src
    tok = tiny_folders.write_tokenizer(tmp / "hart" / "tokenizer")
    tiny_folders.write_llm(tmp / "hart" / "llm", tok,
                           num_classes=num_classes)
    if qwen2_hidden:
      tiny_folders.write_qwen2(tmp / "qwen2", hidden=qwen2_hidden)
  return setup


def _imported(with_ema=True):
  """{tmp}/hart, a small official folder, imported as the workdir
  {tmp}/run (without ema_model.bin its checkpoint has no EMA)."""
  def setup(src, tmp):
    _official()(src, tmp)
    if with_ema:
      finetune_runs.write_official(tmp / "hart")
    import_run.import_official(str(tmp / "hart"), str(tmp / "run"))
  return setup


def _llm_state(edit):
  """{tmp}/hart with `edit` applied to its llm/model.safetensors dict."""
  def setup(src, tmp):
    _official()(src, tmp)
    path = str(tmp / "hart" / "llm" / "model.safetensors")
    state = read_safetensors(path)
    edit(state)
    write_safetensors(path, state)
  return setup


def _llm_config(**fields):
  def setup(src, tmp):
    _official()(src, tmp)
    path = tmp / "hart" / "llm" / "config.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()),
                                    **fields)))
  return setup


TRAIN = ["hart_jax.train", "--workdir={tmp}/run"]
EXPORT = ["hart_jax.export", "--checkpoint={tmp}/run"]
IMPORT = ["hart_jax.import_official", "--hart_dir={tmp}/hart",
          "--out={tmp}/w"]
FINETUNE = "--config=hart_0p7b_finetune:data=synthetic"
SAMPLE = ["hart_jax.sample", "--checkpoint={tmp}/hart", "--out={tmp}/out"]
TINY = "--config=tiny"
CASES = [
    # --- train: flags and configs
    Case("no_config", TRAIN, "--config is required"),
    Case("unknown_config_name", TRAIN + ["--config=tiniest"],
         "no bundled config of that name"),
    Case("missing_config_file", TRAIN + ["--config={tmp}/nope.py"],
         "no such config file"),
    Case("unknown_config_arg", TRAIN + ["--config=tiny:stag=hart"],
         "unknown config arg 'stag'"),
    Case("bad_config_arg_value", TRAIN + ["--config=tiny:stage=gan"],
         "stage must be 'hart' or 'tokenizer'"),
    Case("unknown_override", TRAIN + [TINY, "--config.train.totl_steps=3"],
         "no field 'totl_steps' in train"),
    Case("override_wrong_type", TRAIN + [TINY,
                                         "--config.train.batch_size=abc"],
         "expected an integer"),
    Case("override_a_section", TRAIN + [TINY, "--config.train=3"],
         "--config.train is a section"),
    Case("missing_workdir", ["hart_jax.train", TINY], "--workdir"),
    Case("unknown_flag", TRAIN + [TINY, "--bogus=1"], "bogus"),
    Case("positional_argument", TRAIN + [TINY, "extra"],
         "unexpected arguments: extra"),
    # --- train: values
    Case("batch_zero", TRAIN + [TINY, "--config.train.batch_size=0"],
         "train.batch_size must be >= 1, got 0"),
    Case("batch_negative", TRAIN + [TINY, "--config.train.batch_size=-4"],
         "train.batch_size must be >= 1, got -4"),
    Case("ckpt_every_zero", TRAIN + [TINY, "--config.train.ckpt_every=0"],
         "train.ckpt_every must be >= 1"),
    Case("log_every_zero", TRAIN + [TINY, "--config.train.log_every=0"],
         "train.log_every must be >= 1"),
    Case("warmup_longer_than_run", TRAIN + [
        TINY, "--config.optimizer.warmup_steps=10"],
         "optimizer.warmup_steps (10) must be smaller than "
         "train.total_steps (4)"),
    Case("negative_cfg", TRAIN + [TINY, "--config.sample.cfg=-1"],
         "sample.cfg must be a finite number >= 0"),
    Case("bad_model_shape", TRAIN + [TINY, "--config.model.num_heads=3"],
         "embed_dim 128 is not divisible by num_heads 3"),
    Case("mesh_larger_than_devices", TRAIN + [TINY, "--config.mesh.fsdp=2"],
         "needs 2 devices; this run has 1"),
    Case("mesh_two_fill_axes", TRAIN + [TINY, "--config.mesh.fsdp=-1"],
         "only one mesh axis may be -1"),
    Case("batch_indivisible_by_mesh", TRAIN + [
        TINY, "--config.train.batch_size=6", "--config.mesh.data=4"],
         "does not divide over the mesh's data axes (data 4 x fsdp 1 = 4)",
         devices=8),
    Case("unknown_data_source", TRAIN + [TINY,
                                         "--config.data.source=imagenet"],
         "unknown data source 'imagenet'"),
    Case("missing_image_folder", TRAIN + [
        TINY, "--config.data.source=folder:{tmp}/nope"],
         "image folder not found"),
    Case("empty_image_folder", TRAIN + [
        TINY, "--config.data.source=folder:{tmp}/empty"],
         "no images", setup=_mkdir("empty")),
    Case("missing_tokenizer_folder", TRAIN + [
        TINY, "--config.tokenizer.folder={tmp}/nope"],
         "tokenizer.folder {tmp}/nope does not exist"),
    # --- train: paths
    Case("workdir_is_a_file", ["hart_jax.train", TINY,
                               "--workdir={tmp}/file"],
         "is a file, not a directory", setup=_write("file")),
    Case("workdir_not_writable", ["hart_jax.train", TINY,
                                  "--workdir=/sys/hart_jax_run"],
         "is not writable"),
    Case("init_from_missing", TRAIN + [
        TINY, "--config.train.init_from={tmp}/nope"],
         "train.init_from {tmp}/nope: no such directory"),
    Case("init_from_not_a_run", TRAIN + [
        TINY, "--config.train.init_from={tmp}/other"],
         "is not a hart_jax run with a checkpoint", setup=_mkdir("other")),
    # --- tokenize and official folders
    Case("tokenize_out_is_a_dir", [
        "hart_jax.tokenize", "--tokenizer={tmp}/tok", "--image={tmp}/in.png",
        "--out={tmp}/outdir"], "is a directory",
         setup=_with_tokenizer(lambda t: (t / "outdir").mkdir())),
    Case("tokenize_missing_image", [
        "hart_jax.tokenize", "--tokenizer={tmp}/tok", "--image={tmp}/no.png",
        "--out={tmp}/o.png"], "image not found", setup=_with_tokenizer()),
    Case("tokenize_corrupt_image", [
        "hart_jax.tokenize", "--tokenizer={tmp}/tok", "--image={tmp}/b.png",
        "--out={tmp}/o.png"], "cannot read image",
         setup=_with_tokenizer(lambda t: (t / "b.png").write_bytes(
             b"\x89PNG\r\n\x1a\nbroken"))),
    Case("tokenizer_folder_missing", [
        "hart_jax.tokenize", "--tokenizer={tmp}/nope", "--image={tmp}/in.png",
        "--out={tmp}/o.png"], "no config.json",
         setup=lambda s, t: _png(t)),
    Case("pickle_refused", [
        "hart_jax.tokenize", "--tokenizer={tmp}/tok", "--image={tmp}/in.png",
        "--out={tmp}/o.png"], "refused to load",
         setup=_with_tokenizer(_evil_bin)),
    Case("safetensors_header_wrong_shape", [
        "hart_jax.tokenize", "--tokenizer={tmp}/tok", "--image={tmp}/in.png",
        "--out={tmp}/o.png"],
         "tensor 'vae.quant_conv.bias' has shape '32', not a list",
         setup=_with_tokenizer(_bad_header)),
    Case("config_json_wrong_type", [
        "hart_jax.tokenize", "--tokenizer={tmp}/tok", "--image={tmp}/in.png",
        "--out={tmp}/o.png"], "config.json: field 'ch' is \"16\", expected "
         "an integer", setup=_with_tokenizer(_config_field("ch", "16"))),
    Case("config_json_not_an_object", [
        "hart_jax.tokenize", "--tokenizer={tmp}/tok", "--image={tmp}/in.png",
        "--out={tmp}/o.png"], "config.json must hold a JSON object",
         setup=_with_tokenizer(lambda t: (t / "tok" / "config.json")
                               .write_text("[1, 2]"))),
    Case("init_random_refuses_overwrite", [
        "hart_jax.tokenize", "--tokenizer={tmp}/tok", "--image={tmp}/in.png",
        "--out={tmp}/o.png", "--init_random", "--init_config=tiny"],
         "already holds a tokenizer", setup=_with_tokenizer()),
    # --- the cache CLIs
    Case("features_for_class_conditional", [
        "hart_jax.cache_text_features", TINY, "--out={tmp}/f.npz"],
         "is class-conditional"),
    Case("features_out_is_a_dir", [
        "hart_jax.cache_text_features", "--config=tiny:cond=text",
        "--out={tmp}/d"], "is a directory", setup=_mkdir("d")),
    Case("tokens_batch_zero", [
        "hart_jax.cache_tokens", TINY, "--out={tmp}/c", "--batch_size=0"],
         "--batch_size must be >= 1"),
    Case("tokens_out_is_a_file", [
        "hart_jax.cache_tokens", TINY, "--out={tmp}/c"], "is a file",
         setup=_write("c")),
    # --- sample
    Case("sample_path_is_not_a_model", [
        "hart_jax.sample", "--checkpoint={tmp}/empty", "--class_id=1",
        "--out={tmp}/out"], "is neither a hart_jax training workdir",
         setup=_mkdir("empty")),
    Case("sample_workdir_without_checkpoint", [
        "hart_jax.sample", "--checkpoint={tmp}/run", "--class_id=1",
        "--out={tmp}/out"], "no checkpoint in",
         setup=lambda s, t: (_mkdir("run/checkpoints")(s, t), _write(
             "run/config.json", tiny.get_config().to_json().encode())(
                 s, t))),
    Case("sample_text_encoder_too_wide", SAMPLE + [
        "--text_encoder={tmp}/qwen2", "--prompt=a cat"],
         "hidden_size 48 != the model's context_dim 32",
         setup=_official(qwen2_hidden=48)),
    Case("sample_official_without_text_encoder", SAMPLE + [
        "--prompt=a cat"], "pass its text encoder folder",
         setup=_official()),
    Case("sample_prompt_for_class_model", SAMPLE + ["--prompt=a cat"],
         "is class-conditional (10 classes)",
         setup=_official(num_classes=10)),
    Case("sample_class_out_of_range", SAMPLE + ["--class_id=10"],
         "class id(s) [10] out of range", setup=_official(num_classes=10)),
    Case("sample_negative_cfg", SAMPLE + ["--class_id=1", "--cfg=-1"],
         "cfg must be a finite number >= 0"),
    Case("sample_top_k_zero", SAMPLE + ["--class_id=1", "--top_k=0"],
         "--top_k must be >= 1"),
    Case("sample_top_p_above_one", SAMPLE + ["--class_id=1", "--top_p=1.5"],
         "--top_p must be in (0, 1]"),
    Case("sample_top_p_zero", SAMPLE + ["--class_id=1", "--top_p=0"],
         "--top_p must be in (0, 1]"),
    Case("sample_batch_zero", SAMPLE + ["--class_id=1", "--batch_size=0"],
         "--batch_size must be >= 1"),
    Case("sample_out_is_a_file", [
        "hart_jax.sample", "--checkpoint={tmp}/hart", "--class_id=1",
        "--out={tmp}/file"], "is a file, not a folder", setup=_write("file")),
    Case("sample_out_not_writable", [
        "hart_jax.sample", "--checkpoint={tmp}/hart", "--class_id=1",
        "--out=/sys/hart_jax_samples"], "is not writable"),
    Case("sample_empty_prompts_file", SAMPLE + [
        "--prompts_file={tmp}/p.txt"], "holds no prompts",
         setup=_write("p.txt", b"\n  \n")),
    Case("sample_nothing_to_generate", SAMPLE, "nothing to generate"),
    Case("tokens_missing_tokenizer", [
        "hart_jax.cache_tokens", TINY, "--out={tmp}/c",
        "--config.tokenizer.folder={tmp}/nope"], "does not exist"),
    # --- export, import_official and fine-tuning
    Case("export_into_the_checkpoints", EXPORT + [
        "--out={tmp}/run/checkpoints/e"],
         "is inside the run's checkpoint folder", setup=_imported()),
    Case("export_ema_without_ema", EXPORT + ["--out={tmp}/e"],
         "--weights=ema: checkpoint 0 of {tmp}/run holds no EMA weights",
         setup=_imported(with_ema=False)),
    Case("export_out_exists", EXPORT + ["--out={tmp}/hart"],
         "--out {tmp}/hart already exists; pass --overwrite",
         setup=_imported()),
    Case("export_not_a_run", ["hart_jax.export", "--checkpoint={tmp}/x",
                              "--out={tmp}/e"],
         "has no config.json", setup=_mkdir("x")),
    Case("import_missing_key", IMPORT,
         "missing key(s): ['blocks.1.ffn.up_proj.weight']",
         setup=_llm_state(lambda st: st.pop("blocks.1.ffn.up_proj.weight"))),
    Case("import_extra_key", IMPORT,
         "unexpected key(s): ['blocks.0.attn.extra']",
         setup=_llm_state(lambda st: st.update({
             "blocks.0.attn.extra": np.zeros(3, np.float32)}))),
    Case("import_misshaped_key", IMPORT,
         "blocks.0.attn.proj.weight: checkpoint [64, 32], expected [64, 64]",
         setup=_llm_state(lambda st: st.update({
             "blocks.0.attn.proj.weight": np.zeros((64, 32), np.float32)}))),
    Case("import_config_model_cannot_express", IMPORT,
         "invalid HartConfig: attn_type 'flash'",
         setup=_llm_config(attn_type="flash")),
    Case("import_out_exists", IMPORT[:2] + ["--out={tmp}/x"],
         "--out {tmp}/x already exists; pass --overwrite",
         setup=lambda s, t: (_official()(s, t), _mkdir("x")(s, t))),
    Case("finetune_unknown_lora_target", TRAIN + [
        FINETUNE + ",lora_rank=4,lora_targets=q+qkv"],
         "finetune.lora_targets: unknown target 'qkv'; allowed: q, k, v, "
         "out, gate, up, down, fc1, fc2"),
    Case("finetune_from_another_shape", TRAIN + [
        FINETUNE + ",hart={tmp}/hart"],
         "train.init_from {tmp}/hart does not fit this model: "
         "blocks_0/attn/proj/bias is [64] there but [1536] in this model",
         setup=_official()),
]


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
  folder = tmp_path_factory.mktemp("tokenizer")
  config = TokenizerConfig(**tiny.TOKENIZER)
  official_tokenizer.save_tokenizer(
      str(folder), config,
      official_tokenizer.init_variables(config, jax.random.key(0)))
  return folder


def tree_hashes(root: pathlib.Path) -> dict[str, str]:
  """relative path -> content hash ('dir' for folders), every entry."""
  out = {}
  for path in sorted(root.rglob("*")):
    rel = str(path.relative_to(root))
    out[rel] = ("dir" if path.is_dir()
                else hashlib.sha256(path.read_bytes()).hexdigest())
  return out


def run_entry_point(args, cwd, devices=1, timeout=300):
  """`python -m args[0] args[1:]` (forked from a warm interpreter)."""
  return cli_runner.run_module(args[0], args[1:], cwd, devices, timeout)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_mistake_is_one_clear_line(case, tmp_path, tokenizer_folder):
  if case.name == "pickle_refused":
    require_module("torch", "pip install -e '.[test]'")
  if case.setup:
    case.setup(tokenizer_folder, tmp_path)
  before = tree_hashes(tmp_path)
  args = [a.replace("{tmp}", str(tmp_path)) for a in case.args]
  res = run_entry_point(args, cwd=tmp_path, devices=case.devices)
  fragment = case.fragment.replace("{tmp}", str(tmp_path))
  lines = res.stderr.strip().splitlines()
  assert res.returncode == 2, res.stderr[-3000:]
  assert "Traceback" not in res.stderr, res.stderr[-3000:]
  assert lines and lines[-1].startswith("error: "), res.stderr[-3000:]
  assert fragment in lines[-1], lines[-1]
  assert tree_hashes(tmp_path) == before
