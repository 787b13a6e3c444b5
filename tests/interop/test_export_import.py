"""Weights both ways: training workdir -> official folders -> workdir.

Exports of real (2-step) runs load into the PyTorch reference of the
official model with strict key matching and give its logits; importing
them back gives bit-identical arrays and the same greedy samples; the
tokenizer stage, class-conditional models, formats and failures behave as
documented.
"""

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import torch

from configs import tiny
from hart_jax import checkpointing
from hart_jax import run_config
from hart_jax import sampling
from hart_jax.errors import CheckpointError, InputError
from hart_jax.interop import export_run, import_run
from hart_jax.interop import official_tokenizer as ot
from hart_jax.interop import official_transformer as otr
from hart_jax.interop.state_dict_io import read_state_dict
from hart_jax.models.hart import layer_stack
from hart_jax.models.hart.config import from_config_dict
from hart_jax.models.hart.transformer import HartTransformer
from hart_jax.models.tokenizer import HybridTokenizer
from hart_jax.models.tokenizer.config import TokenizerConfig
from tests.finetune_runs import MODES, runs
from tests.torch_ref.hart_transformer import HARTForT2IRef


def _inputs(config, batch=2, seed=0):
  rng = np.random.default_rng(seed)
  t = config.context_token
  mask = np.ones((batch, t), bool)
  mask[1, 5:] = False
  return (rng.normal(size=(batch, t, config.context_dim)).astype(np.float32),
          mask, np.cumsum(mask, 1) - 1,
          rng.normal(size=(batch, config.image_tokens - 1,
                           config.latent_channels)).astype(np.float32))


def _model_of(workdir):
  """(unrolled HartConfig, EMA params, raw params) as a reader sees them."""
  config = from_config_dict(run_config.load_run_config(str(workdir)).model)
  _, items = checkpointing.read_state_items(str(workdir),
                                            ("ema_params", "params"))
  unroll = lambda p: layer_stack.to_layout(p, scanned=False)
  return (config.replace(scan_layers=False), unroll(items["ema_params"]),
          unroll(items["params"]))


@functools.lru_cache(maxsize=None)
def _logits_fn(config):
  """One compiled teacher-forced forward per model config."""
  return jax.jit(lambda p, *x: HartTransformer(config).apply(
      {"params": p}, *x)["logits"])


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  """mode -> the workdir imported from that run's export."""
  root = tmp_path_factory.mktemp("imported")
  out = {}
  for mode in MODES:
    out[mode] = root / mode
    import_run.import_official(str(runs().exports[mode]), str(out[mode]))
  return out


@pytest.mark.parametrize("name", ["A", "B"])
def test_reference_reproduces_the_official_logits(golden_dir, name):
  """The torch transcription is the judge below: first it must give the
  official training forward's logits (released flags; per-block AdaLN
  with a learned level table)."""
  folder = golden_dir / "transformer_tiny" / name
  ref = HARTForT2IRef(json.loads((folder / "config.json").read_text()),
                      vocab_size=1024).eval()
  ref.load_state_dict(safetensors.torch.load_file(
      folder / "model.safetensors"), strict=True)
  g = np.load(folder / "train_forward.npz")
  with torch.no_grad():
    got = ref(*(torch.from_numpy(g[k]) for k in (
        "context", "context_mask", "context_position_ids",
        "x_BLCv_wo_first_l"))).numpy()
  # Measured: 7.7e-7 (A) and 1.2e-6 (B) of scale.
  assert np.abs(got - g["logits"]).max() <= 1e-5 * np.abs(g["logits"]).max()


@pytest.mark.parametrize("mode", list(MODES))
def test_export_loads_strictly_and_gives_the_same_logits(mode):
  llm = runs().exports[mode] / "llm"
  config, ema, raw = _model_of(runs().workdirs[mode])
  ref = HARTForT2IRef(json.loads((llm / "config.json").read_text()),
                      vocab_size=config.vocab_size).eval()
  # Both files hold the full official key set, buffers included.
  ref.load_state_dict(safetensors.torch.load_file(llm / "model.safetensors"),
                      strict=True)
  ref.load_state_dict(torch.load(llm / "ema_model.bin", weights_only=True),
                      strict=True)
  inputs = _inputs(config)
  with torch.no_grad():
    want = ref(*map(torch.from_numpy, inputs)).numpy()
  got = _logits_fn(config)(ema, *map(jnp.asarray, inputs))
  scale = np.abs(want).max()
  err = np.abs(np.asarray(got) - want).max()
  print(f"{mode}: max |logits - torch| = {err:.3g} ({err / scale:.2g} of "
        "scale)")
  assert err <= 1e-5 * scale


@pytest.mark.parametrize("mode", list(MODES))
def test_round_trip_is_bit_identical(mode, imported, tmp_path):
  _, ema, raw = _model_of(runs().workdirs[mode])
  _, ema2, raw2 = _model_of(imported[mode])
  for a, b in ((ema, ema2), (raw, raw2)):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      assert x.dtype == y.dtype
      np.testing.assert_array_equal(x, y)
  # ... and exporting the import again writes the same tensors.
  export_run.export_run(str(imported[mode]), str(tmp_path / "again"))
  for name in ("llm/model.safetensors", "llm/ema_model.bin",
               "tokenizer/model.safetensors"):
    first = read_state_dict(str(runs().exports[mode] / name))
    second = read_state_dict(str(tmp_path / "again" / name))
    assert sorted(first) == sorted(second)
    for k in first:
      np.testing.assert_array_equal(first[k], second[k], err_msg=k)


def test_imported_workdir_samples_like_the_original(imported):
  """Sampling rebuilds model and tokenizer from the imported config.json."""
  def load(workdir):
    config = run_config.load_run_config(str(workdir))
    t_config, ema, _ = _model_of(workdir)
    tok_config, tok_vars = ot.load_frozen_tokenizer(config)
    return t_config, ema, tok_config, tok_vars

  t_config, ema, tok_config, tok_vars = load(runs().workdirs["full"])
  t2, ema2, tok2, tok_vars2 = load(imported["full"])
  assert (t2, tok2) == (t_config, tok_config)
  s_config = sampling.SamplingConfig(greedy=True)
  sample = jax.jit(lambda p, tv, *x: sampling.generate(
      t_config, s_config, p, HybridTokenizer(tok_config), tv, *x,
      jax.random.key(0)))
  context, mask, pos, _ = _inputs(t_config)
  a = sample(ema, tok_vars, context, mask, pos)
  b = sample(ema2, tok_vars2, context, mask, pos)
  for si, (x, y) in enumerate(zip(a["indices"], b["indices"])):
    np.testing.assert_array_equal(x, y, err_msg=f"scale {si}")
  np.testing.assert_array_equal(a["image"], b["image"])


def test_import_without_ema_holds_none(tmp_path):
  official = runs().official
  (tmp_path / "src").mkdir()
  for sub in ("llm", "tokenizer"):
    (tmp_path / "src" / sub).mkdir()
    for f in (official / sub).iterdir():
      if f.name != "ema_model.bin":
        (tmp_path / "src" / sub / f.name).write_bytes(f.read_bytes())
  result = import_run.import_official(str(tmp_path / "src"),
                                      str(tmp_path / "w"))
  assert result.ema_from is None and "no ema_model.bin" in result.notes[0]
  _, stored = checkpointing.checkpoint_items(str(tmp_path / "w"))
  assert "ema_params" not in stored and "params" in stored
  with pytest.raises(CheckpointError, match="--weights=ema: checkpoint 0 "):
    export_run.export_run(str(tmp_path / "w"), str(tmp_path / "e"))
  assert not (tmp_path / "e").exists()
  export_run.export_run(str(tmp_path / "w"), str(tmp_path / "e"),
                        weights="raw", weights_format="bin")
  assert sorted(os.listdir(tmp_path / "e" / "llm")) == [
      "config.json", "ema_model.bin", "pytorch_model.bin"]
  assert sorted(os.listdir(tmp_path / "e" / "tokenizer")) == [
      "config.json", "pytorch_model.bin"]


def _save_run(config, state: dict, workdir) -> None:
  """A workdir as training leaves it at step 1 (the TrainState fields that
  export reads, under the stage's names), without compiling a step."""
  run_config.save_run_config(str(workdir), config)
  manager = checkpointing.make_manager(str(workdir), 1, None,
                                       async_save=False)
  checkpointing.save(manager, 1, dict(state, step=np.int32(1)), None)
  checkpointing.wait(manager)
  manager.close()


def test_tokenizer_stage_exports_its_tokenizer_only(tmp_path):
  config = tiny.get_config("stage=tokenizer")
  tc = TokenizerConfig(**dict(config.model))
  variables = jax.device_get(ot.init_variables(tc, jax.random.key(5)))
  # tokenizer_stage.py's fields: params, ema_params (made different here,
  # so the export's choice shows) and extra's buffers and discriminator.
  ema = jax.tree.map(lambda x: x + 1.0, variables["vae"]["params"])
  _save_run(config, dict(
      params=variables["vae"]["params"], ema_params=ema, extra=dict(
          buffers=variables["vae"]["buffers"],
          disc_params=variables["disc"]["params"],
          disc_stats=variables["disc"]["batch_stats"])), tmp_path / "run")
  result = export_run.export_run(str(tmp_path / "run"), str(tmp_path / "e"))
  assert result.stage == "tokenizer" and list(result.folders) == [
      "tokenizer"]
  assert sorted(os.listdir(tmp_path / "e")) == ["tokenizer"]
  _, loaded = ot.load_tokenizer(str(tmp_path / "e" / "tokenizer"))
  want = dict(variables, vae=dict(variables["vae"], params=ema))
  assert jax.tree.structure(loaded) == jax.tree.structure(want)
  for x, y in zip(jax.tree.leaves(loaded), jax.tree.leaves(want)):
    np.testing.assert_array_equal(x, y)


def test_class_conditional_export_is_c2i_with_a_note(tmp_path):
  config = tiny.get_config("stage=hart")
  model = from_config_dict(config.model)
  params = jax.device_get(otr.init_params(model, jax.random.key(2)))
  _save_run(config, dict(params=params, ema_params=params), tmp_path / "run")
  result = export_run.export_run(str(tmp_path / "run"), str(tmp_path / "e"))
  assert "no model class" in result.notes[0]
  raw = json.loads((tmp_path / "e" / "llm" / "config.json").read_text())
  assert raw["model_type"] == "hart_transformer_c2i"
  import_run.import_official(str(tmp_path / "e"), str(tmp_path / "w"))
  again = from_config_dict(run_config.load_run_config(
      str(tmp_path / "w")).model)
  # Only hart_jax's training-only fields fall back to their defaults.
  assert again == dataclasses.replace(model, cond_drop_mode="normal")
  _, items = checkpointing.read_state_items(str(tmp_path / "w"),
                                            ("params",))
  for x, y in zip(jax.tree.leaves(items["params"]), jax.tree.leaves(params)):
    np.testing.assert_array_equal(x, y)


def test_overwrite_replaces_only_an_export(tmp_path):
  workdir, out = str(runs().workdirs["full"]), tmp_path / "e"
  export_run.export_run(workdir, str(out))
  with pytest.raises(InputError, match="already exists; pass --overwrite"):
    export_run.export_run(workdir, str(out))
  export_run.export_run(workdir, str(out), weights="raw", overwrite=True)
  (out / "notes.txt").write_text("mine")
  with pytest.raises(InputError, match=r"holds more than an export"):
    export_run.export_run(workdir, str(out), overwrite=True)
  with pytest.raises(InputError, match="holds the run"):
    export_run.export_run(workdir, os.path.dirname(workdir), overwrite=True)


def test_a_failed_export_leaves_nothing(tmp_path, monkeypatch):
  def broken(*args, **kwargs):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(ot, "save_tokenizer", broken)
  with pytest.raises(InputError, match="no space left"):
    export_run.export_run(str(runs().workdirs["full"]), str(tmp_path / "e"))
  assert os.listdir(tmp_path) == []


def test_the_demo_workdir_exports_its_hart_stage(tmp_path):
  (tmp_path / "demo" / "hart").mkdir(parents=True)
  (tmp_path / "demo" / "hart" / "config.json").write_text("{}")
  workdir, notes = export_run.resolve_workdir(str(tmp_path / "demo"))
  assert workdir == str(tmp_path / "demo" / "hart")
  assert "the demo's workdir" in notes[0]
