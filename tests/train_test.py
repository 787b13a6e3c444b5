"""Training: sharded == single-device, kill/resume, init_from, learning.

All on the 8 fake CPU devices with configs/tiny.py.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import flax
import jax
import numpy as np
import pytest

from configs import tiny
from hart_jax import checkpointing
from hart_jax import sharding
from hart_jax import trainer
from hart_jax.data import make_source
from hart_jax.models.hart import layer_stack
from tests.helpers import unavailable
from tests.training_helpers import first_hart_step

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(arg="stage=hart", **train):
  config = tiny.get_config(arg)
  with config.unlocked():
    # One device: 8 fake CPU devices on 2 cores make conv nets crawl; the
    # sharding test below builds its meshes explicitly.
    config.mesh.data = 1
    # The grids' sampler compile is not what these tests are about.
    config.sample.every = 0
    for k, v in train.items():
      section, key = k.split("__")
      config[section][key] = v
  return config


def _one_step(config, mesh):
  _, _, state, metrics = first_hart_step(config, mesh)
  return jax.device_get(state.params), metrics


@pytest.mark.parametrize(
    "scan_layers", [pytest.param(False, marks=pytest.mark.smoke), True])
def test_sharded_step_equals_single_device(scan_layers):
  """(data 2, fsdp 2, tensor 2) == one device; the sharded run also scans
  its blocks in the second case (same seed, same weights: compared in the
  scanned layout)."""
  config = _config()
  sharded_config = _config(model__scan_layers=scan_layers)
  mesh8 = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  mesh1 = sharding.make_mesh(dict(data=1), devices=jax.devices()[:1])
  p8, m8 = _one_step(sharded_config, mesh8)
  p1, m1 = _one_step(config, mesh1)
  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
  flat8 = flax.traverse_util.flatten_dict(p8)
  flat1 = flax.traverse_util.flatten_dict(
      layer_stack.to_layout(p1, scan_layers))
  assert set(flat8) == set(flat1)
  for path in flat1:
    np.testing.assert_allclose(flat8[path], flat1[path], rtol=1e-5,
                               atol=1e-5, err_msg="/".join(path))
  # The step really moved the params, so the comparison is not vacuous.
  assert m1["grad_norm"] > 0


def _final_params(workdir, key="params"):
  """(step, flat params or EMA) of a run's newest checkpoint."""
  step, items = checkpointing.read_state_items(str(workdir), (key,))
  return step, flax.traverse_util.flatten_dict(items[key])


def _train_cmd(workdir, steps):
  return [sys.executable, "-m", "hart_jax.train",
          f"--config={REPO / 'configs' / 'tiny.py'}:stage=hart,steps={steps}",
          f"--workdir={workdir}", "--verbosity=-1", "--config.mesh.data=1",
          "--config.sample.every=0"]


def test_sigkill_and_resume_is_bitwise_identical(tmp_path):
  steps = 24
  env = dict(os.environ, PYTHONPATH=str(REPO))
  whole = tmp_path / "whole"
  subprocess.run(_train_cmd(whole, steps), check=True, env=env, cwd=REPO,
                 capture_output=True, timeout=600)
  killed = tmp_path / "killed"
  proc = subprocess.Popen(_train_cmd(killed, steps), env=env, cwd=REPO,
                          stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 600
  # Kill once a mid-run checkpoint is finalised (orbax renames its temp
  # folder to the step number only when complete).
  while not (killed / "checkpoints" / "8").exists():
    assert proc.poll() is None, "the run ended before it could be killed"
    assert time.time() < deadline
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  done = sorted(int(p.name) for p in (killed / "checkpoints").iterdir()
                if p.name.isdigit())
  assert done[-1] < steps, "killed too late to test a resume"
  subprocess.run(_train_cmd(killed, steps), check=True, env=env, cwd=REPO,
                 capture_output=True, timeout=600)
  step_a, params_a = _final_params(whole)
  step_b, params_b = _final_params(killed)
  assert step_a == step_b == steps
  for path in params_a:
    np.testing.assert_array_equal(params_a[path], params_b[path],
                                  err_msg="/".join(path))


def test_init_from_converts_the_level_table(tmp_path):
  src = _config(train__total_steps=2)
  with src.unlocked():
    src.model.use_timestep_embed = False
  trainer.train_and_evaluate(src, str(tmp_path / "a"))
  dst = _config(train__total_steps=1)
  with dst.unlocked():
    dst.model.use_timestep_embed = False
    dst.model.patch_nums = (1, 2, 3, 4, 8)   # another schedule, same latent
    dst.train.init_from = str(tmp_path / "a")
    dst.optimizer.lr = 0.0                   # keep the copied values
  trainer.train_and_evaluate(dst, str(tmp_path / "b"))
  _, a = _final_params(str(tmp_path / "a"))
  _, b = _final_params(str(tmp_path / "b"))
  table_a, table_b = a[("lvl_embed",)], b[("lvl_embed",)]
  assert table_a.shape == (4, 128) and table_b.shape == (5, 128)
  _, a_ema = _final_params(str(tmp_path / "a"), "ema_params")
  np.testing.assert_array_equal(table_b[:4], a_ema[("lvl_embed",)])
  np.testing.assert_array_equal(table_b[4], a_ema[("lvl_embed",)][3])
  np.testing.assert_array_equal(b[("head", "kernel")],
                                a_ema[("head", "kernel")])


def test_tiny_tokenizer_loss_falls_on_fashion_mnist(tmp_path):
  try:
    make_source("fashion_mnist")
  except Exception as e:  # pylint: disable=broad-except
    unavailable(f"Fashion-MNIST unavailable: {e}")
  config = _config("stage=tokenizer,steps=40", train__log_every=1,
                   train__ckpt_every=40)
  with config.unlocked():
    config.data.source = "fashion_mnist"
    config.data.source_kwargs = dict(split="train")
    config.loss.disc = 0.0
    config.optimizer.lr = 2e-3
  trainer.train_and_evaluate(config, str(tmp_path))
  losses = [json.loads(l)["loss"] for l in
            (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert len(losses) == 40
  assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_nonfinite_updates_are_skipped_then_the_run_stops(tmp_path):
  config = _config(train__total_steps=10, train__max_nonfinite_steps=3)
  with config.unlocked():
    config.optimizer.lr = float("nan")
  with pytest.raises(trainer.NonFiniteError, match="3 consecutive steps"):
    trainer.train_and_evaluate(config, str(tmp_path))


def test_locked_config_rejects_unknown_keys():
  config = tiny.get_config()
  with pytest.raises(AttributeError):
    config.train.totl_steps = 3


def test_hybrid_decoder_finetune_trains_only_the_decoder(tmp_path):
  from hart_jax.interop import official_tokenizer  # pylint: disable=g-import-not-at-top
  from hart_jax.models.tokenizer.config import TokenizerConfig  # pylint: disable=g-import-not-at-top
  tok = TokenizerConfig(**tiny.TOKENIZER)
  official_tokenizer.save_tokenizer(
      str(tmp_path / "tok"), tok,
      official_tokenizer.init_variables(tok, jax.random.key(3)))
  config = _config("stage=tokenizer,steps=2")
  with config.unlocked():
    config.mode = "hybrid_decoder"
    config.init_tokenizer = str(tmp_path / "tok")
    config.skip_continuous_prob = 0.5
    config.restart_dead_every = 0
  trainer.train_and_evaluate(config, str(tmp_path / "run"))
  _, before = official_tokenizer.load_tokenizer(str(tmp_path / "tok"))
  before = flax.traverse_util.flatten_dict(before["vae"]["params"])
  _, after = _final_params(str(tmp_path / "run"))
  moved = {p[0] for p in before
           if not np.array_equal(before[p], after[p])}
  assert moved == {"decoder", "post_quant_conv"}, moved
