"""Prompt -> image: the one-call pipeline and `python -m hart_jax.sample`,
on a class-conditional training workdir and on official-layout folders
with a Qwen2 text encoder (all tiny and random, made here)."""

import json
import logging
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest

from configs import tiny
from hart_jax import HartPipeline
from hart_jax import checkpointing
from hart_jax import sampling
from hart_jax import trainer
from hart_jax.errors import ConfigError
from hart_jax.interop import official_tokenizer, official_transformer
from hart_jax.models.tokenizer import HybridTokenizer
from hart_jax.text.qwen2_prompt import Qwen2TextEncoder
from tests import tiny_folders

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A class-conditional tiny HART run of 2 steps."""
  path = tmp_path_factory.mktemp("run")
  config = tiny.get_config("stage=hart,steps=2")
  with config.unlocked():
    config.mesh.data = 1
    config.sample.every = 0
  trainer.train_and_evaluate(config, str(path))
  return path


@pytest.fixture(scope="module")
def official(tmp_path_factory):
  """hart/{llm,tokenizer} and a Qwen2 folder whose width fits."""
  root = tmp_path_factory.mktemp("official")
  tok = tiny_folders.write_tokenizer(root / "hart" / "tokenizer")
  tiny_folders.write_llm(root / "hart" / "llm", tok, context_dim=32,
                         context_token=24)
  tiny_folders.write_qwen2(root / "qwen2", hidden=32)
  return root


def test_same_seed_same_images_and_no_second_compile(workdir, caplog):
  pipe = HartPipeline.load(str(workdir))
  first = pipe(class_ids=[3, 3, 7], seed=0, output="np")
  assert first.shape == (3, 32, 32, 3) and first.dtype == np.uint8
  assert pipe.last_timings["compile"] > 0
  jax.config.update("jax_log_compiles", True)
  try:
    with caplog.at_level(logging.DEBUG):
      again = pipe(class_ids=[3, 3, 7], seed=0, output="np")
  finally:
    jax.config.update("jax_log_compiles", False)
  np.testing.assert_array_equal(again, first)
  assert pipe.last_timings["compile"] == 0
  assert not [r for r in caplog.records if "ompil" in r.getMessage()], [
      r.getMessage() for r in caplog.records][:5]
  other = pipe(class_ids=[3, 3, 7], seed=1, output="np")
  assert not np.array_equal(other, first)
  images = pipe(class_ids=[3], seed=0)
  assert isinstance(images[0], Image.Image) and images[0].size == (32, 32)


def test_chunks_equal_separate_calls(workdir):
  """batch_size splits the work; chunk i uses fold_in(key(seed), i), and a
  short last chunk is padded without changing the others."""
  pipe = HartPipeline.load(str(workdir))
  whole = pipe(class_ids=[1, 2, 5], seed=4, batch_size=2, output="np")
  first_two = pipe(class_ids=[1, 2], seed=4, batch_size=2, output="np")
  np.testing.assert_array_equal(whole[:2], first_two)
  assert not np.array_equal(whole[2], whole[0])


def test_workdir_weights_match_the_checkpoint(workdir):
  """EMA by default; `weights="raw"` and `step` pick the others."""
  ema = HartPipeline.load(str(workdir)).model
  raw = HartPipeline.load(str(workdir), weights="raw", step=2).model
  _, items = checkpointing.read_state_items(str(workdir),
                                            ("ema_params", "params"))
  for a, b in zip(jax.tree.leaves(ema.t_params),
                  jax.tree.leaves(items["ema_params"])):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(raw.t_params),
                  jax.tree.leaves(items["params"])):
    np.testing.assert_array_equal(a, b)
  assert ema.source["step"] == 2


def test_official_folders_equal_the_sampler(official):
  """The pipeline on official folders = sampling.generate on the same
  encoder output and key (chunk 0 of seed 5)."""
  pipe = HartPipeline.load(str(official / "hart"),
                           text_encoder=str(official / "qwen2"))
  prompts = ["a red fox in snow", "a fox"]
  got = pipe(prompts, seed=5, more_smooth=False, output="np")
  t_config, t_params = official_transformer.load_transformer(
      str(official / "hart" / "llm"))
  tok_config, tok_vars = official_tokenizer.load_tokenizer(
      str(official / "hart" / "tokenizer"))
  encoder = Qwen2TextEncoder(32, 24, path=str(official / "qwen2"))
  context, mask, pos = encoder.encode(encoder.init_params(None),
                                      encoder.host_inputs(prompts))
  want = jax.jit(lambda p, v, c, m, i, r: sampling.generate(
      t_config, sampling.SamplingConfig(more_smooth=False), p,
      HybridTokenizer(tok_config), v, c, m, i, r)["image"])(
          t_params, tok_vars["vae"], context, mask, pos,
          jax.random.fold_in(jax.random.key(5), 0))
  want = np.round(np.asarray(want) * 255).astype(np.uint8)
  # One rounding step of 255 at most, from a different fusion of the
  # three jitted phases.
  assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_wrong_inputs_are_named(workdir, official):
  pipe = HartPipeline.load(str(workdir))
  with pytest.raises(ConfigError, match="class-conditional"):
    pipe(["a cat"])
  with pytest.raises(ConfigError, match=r"class id\(s\) \[10\] out of range"):
    pipe(class_ids=[10])
  with pytest.raises(ConfigError, match="batch_size must be >= 1"):
    pipe(class_ids=[1], batch_size=0)
  with pytest.raises(ConfigError, match="cfg must be"):
    pipe(class_ids=[1], cfg=-1)
  with pytest.raises(ConfigError, match="pass its text encoder folder"):
    HartPipeline.load(str(official / "hart"))
  tiny_folders.write_qwen2(official / "qwen2_wide", hidden=48)
  with pytest.raises(ConfigError, match="hidden_size 48 != the model's "
                     "context_dim 32"):
    HartPipeline.load(str(official / "hart"),
                      text_encoder=str(official / "qwen2_wide"))


def _sample_cli(args, cwd):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return subprocess.run([sys.executable, "-m", "hart_jax.sample"] + args,
                        cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=600)


@pytest.mark.smoke
def test_cli_writes_named_pngs_grid_and_settings(official, tmp_path):
  (tmp_path / "prompts.txt").write_text("a red fox in snow\n\nA Red Fox "
                                        "in Snow!\n")
  res = _sample_cli([
      "--checkpoint=hart", "--text_encoder=qwen2",
      f"--prompts_file={tmp_path / 'prompts.txt'}", "--prompt=a fox",
      f"--out={tmp_path / 'out'}", "--seed=5", "--nomore_smooth",
      "--batch_size=2"], cwd=official)
  assert res.returncode == 0, res.stderr[-3000:]
  assert "Traceback" not in res.stderr
  files = sorted(os.listdir(tmp_path / "out"))
  assert files == ["a-fox.png", "a-red-fox-in-snow-2.png",
                   "a-red-fox-in-snow.png", "grid.png", "settings.json"]
  settings = json.loads((tmp_path / "out" / "settings.json").read_text())
  assert settings["prompts"] == ["a fox", "a red fox in snow",
                                 "A Red Fox in Snow!"]
  assert settings["seed"] == 5 and settings["more_smooth"] is False
  assert settings["checkpoint"]["kind"] == "official"
  for phase in ("compile", "text encoding", "AR scales",
                "residual diffusion", "decode"):
    assert phase in res.stdout
  # The PNGs are the pipeline's images.
  pipe = HartPipeline.load(str(official / "hart"),
                           text_encoder=str(official / "qwen2"))
  want = pipe(settings["prompts"], seed=5, more_smooth=False, batch_size=2,
              output="np")
  got = np.asarray(Image.open(tmp_path / "out" / "a-red-fox-in-snow.png"))
  np.testing.assert_array_equal(got, want[1])
