"""LPIPS-vgg against an independent PyTorch implementation written here."""

import logging
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import torch.nn.functional as F

from hart_jax.interop.state_dict_io import CheckpointError
from hart_jax.losses import lpips as lp
from tests.losses import helpers

REPO = pathlib.Path(__file__).resolve().parents[2]


def _torch_lpips(sd, x, y):
  """Zhang et al.'s LPIPS (lpips.LPIPS(net="vgg") forward) in float64."""
  t = {k: torch.from_numpy(v).double() for k, v in sd.items()}
  shift = torch.tensor([-.030, -.088, -.188]).double().view(1, 3, 1, 1)
  scale = torch.tensor([.458, .448, .450]).double().view(1, 3, 1, 1)

  def taps(z):
    z = (torch.from_numpy(z).double().permute(0, 3, 1, 2) - shift) / scale
    out, idx = [], 0
    for v in helpers.CFG:
      if v == "M":
        z, idx = F.max_pool2d(z, 2, 2), idx + 1
        continue
      z = F.conv2d(z, t[f"features.{idx}.weight"], t[f"features.{idx}.bias"],
                   padding=1)
      z = F.relu(z)
      if idx + 1 in helpers.TAPS:
        out.append(z)
      idx += 2
    return out

  total = 0
  for k, (a, b) in enumerate(zip(taps(x), taps(y))):
    na = a / (torch.sqrt(torch.sum(a ** 2, dim=1, keepdim=True)) + 1e-10)
    nb = b / (torch.sqrt(torch.sum(b ** 2, dim=1, keepdim=True)) + 1e-10)
    d = F.conv2d((na - nb) ** 2, t[f"lin{k}.model.1.weight"])
    total = total + d.mean(dim=(2, 3), keepdim=True)
  return total.reshape(-1).numpy()


@pytest.fixture(scope="module")
def state_dict():
  return helpers.random_lpips_state_dict()


@pytest.fixture(scope="module")
def weights_file(state_dict, tmp_path_factory):
  path = tmp_path_factory.mktemp("lpips") / "lpips_vgg.safetensors"
  safetensors.numpy.save_file(state_dict, str(path))
  return str(path)


@pytest.fixture(scope="module")
def images():
  # 40 x 48 is not a multiple of 16: exercises floor pooling (5 -> 2).
  rng = np.random.default_rng(1)
  x = rng.uniform(-1, 1, (2, 40, 48, 3)).astype(np.float32)
  y = np.clip(x + rng.normal(0, .3, x.shape), -1, 1).astype(np.float32)
  return x, y


_jit_call = jax.jit(lambda loss, x, y: loss(x, y))


def test_matches_torch_reference(state_dict, weights_file, images):
  loss, enabled = lp.make_lpips(weights_file)
  assert enabled and loss.enabled
  x, y = images
  got = np.asarray(_jit_call(loss, x, y))
  want = _torch_lpips(state_dict, x, y)
  assert got.shape == (2,) and np.all(want > 0.01)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_npz_file_gives_same_params(state_dict, weights_file, tmp_path):
  npz = str(tmp_path / "w.npz")
  np.savez(npz, **state_dict)
  a, b = lp.load_lpips_params(weights_file), lp.load_lpips_params(npz)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert a["vgg"][0]["kernel"].shape == (3, 3, 3, 64)
  assert [w.shape for w in a["lin"]] == [(c,) for c in helpers.LIN_C]


def test_identical_images_give_zero_and_zero_grad(weights_file, images):
  loss, _ = lp.make_lpips(weights_file)
  x = jnp.asarray(images[0])
  np.testing.assert_array_equal(_jit_call(loss, x, x), 0.0)
  grad = jax.jit(jax.grad(lambda lo, a: jnp.sum(lo(a, x)), argnums=1))(
      loss, x)
  # Not bitwise 0: the backward program may normalise x twice differently
  # (up to 3e-9 seen, CPU-dependent); a gradient between different images
  # is many orders larger, so 1e-7 still tells the two apart.
  np.testing.assert_allclose(grad, 0.0, atol=1e-7)


def test_unit_normalise_has_finite_grad_at_zero():
  grad = jax.grad(lambda f: jnp.sum(lp._unit_normalise(f)))(jnp.zeros((4,)))
  assert np.all(np.isfinite(grad))


def test_weights_stay_out_of_the_compiled_program(weights_file, images):
  """Passed as an argument, the 59 MB of VGG weights are not constants."""
  loss, _ = lp.make_lpips(weights_file)
  text = _jit_call.lower(loss, *images).as_text()
  assert len(text) < 200_000


@pytest.mark.parametrize("path", [None, "/nonexistent/lpips.safetensors"])
def test_disabled_returns_zero_and_warns_once(path, caplog, images):
  with caplog.at_level(logging.WARNING):
    loss, enabled = lp.make_lpips(path)
    out1 = loss(*images)
    out2 = _jit_call(loss, *images)
  assert not enabled and not loss.enabled
  np.testing.assert_array_equal(out1, np.zeros(2))
  np.testing.assert_array_equal(out2, np.zeros(2))
  warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
  assert len(warnings) == 1
  msg = warnings[0].getMessage()
  assert "LPIPS perceptual loss DISABLED" in msg
  assert ("None" in msg) if path is None else (path in msg)


def test_bad_files_raise(state_dict, tmp_path):
  missing = dict(state_dict)
  del missing["lin3.model.1.weight"]
  negative = dict(state_dict)
  negative["lin0.model.1.weight"] = -negative["lin0.model.1.weight"]
  for name, sd in (("missing", missing), ("negative", negative)):
    path = str(tmp_path / f"{name}.safetensors")
    safetensors.numpy.save_file(sd, path)
    with pytest.raises(CheckpointError, match=r"missing|negative"):
      lp.make_lpips(path)
  with pytest.raises(CheckpointError, match=".safetensors or .npz"):
    lp.load_lpips_params(str(tmp_path / "w.pth"))


def _torch_dicts(state_dict):
  """What torchvision's vgg16() and lpips.LPIPS(net="vgg") would hold."""
  tv = {k: torch.from_numpy(v) for k, v in state_dict.items()
        if k.startswith("features.")}
  tv["classifier.0.weight"] = torch.zeros(4, 4)  # must be ignored
  lin = {k: torch.from_numpy(v) for k, v in state_dict.items()
         if k.startswith("lin")}
  slice_of = {i: 1 + sum(i > b for b in helpers.TAPS) for i in range(30)}
  full = {"scaling_layer.shift": torch.zeros(1, 3, 1, 1)}
  for k, v in tv.items():
    if k.startswith("features."):
      i = int(k.split(".")[1])
      full[f"net.slice{slice_of[i]}.{k[len('features.'):]}"] = v
  for k, v in lin.items():
    full[k] = full[f"lins.{k[3]}.model.1.weight"] = v
  return tv, lin, full


def test_convert_from_torchvision_and_lpips_dicts(state_dict, tmp_path):
  tv, lin, full = _torch_dicts(state_dict)
  for vgg_sd, lin_sd in ((tv, lin), (full, full)):
    out = lp.convert_torch_lpips(vgg_sd, lin_sd)
    assert sorted(out) == sorted(state_dict)
    for k, v in out.items():
      np.testing.assert_array_equal(v, state_dict[k])
  path = str(tmp_path / "conv.safetensors")
  lp.save_lpips_params(path, lp.convert_torch_lpips(tv, lin))
  ref = str(tmp_path / "ref.npz")
  np.savez(ref, **state_dict)
  jax.tree.map(np.testing.assert_array_equal, lp.load_lpips_params(path),
               lp.load_lpips_params(ref))


def test_cli_converts_pth_files(state_dict, tmp_path):
  tv, lin, _ = _torch_dicts(state_dict)
  torch.save(tv, tmp_path / "vgg16.pth")
  torch.save(lin, tmp_path / "vgg.pth")
  out = str(tmp_path / "out.npz")
  res = subprocess.run(
      [sys.executable, "-m", "hart_jax.convert_lpips",
       f"--vgg={tmp_path / 'vgg16.pth'}", f"--lin={tmp_path / 'vgg.pth'}",
       f"--out={out}"], capture_output=True, text=True, timeout=300,
      cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
  assert res.returncode == 0, res.stderr
  assert "wrote" in res.stdout
  params = lp.load_lpips_params(out)
  np.testing.assert_array_equal(
      params["vgg"][12]["bias"], state_dict["features.28.bias"])
