"""The FID Inception against a torch transcription; loading; sharding."""

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from hart_jax import sharding
from hart_jax.errors import CheckpointError, InputError
from hart_jax.evals import fid, inception, resize
from hart_jax.interop.state_dict_io import write_safetensors
from tests.helpers import assert_close_scaled, nchw, require_module

REPO = pathlib.Path(__file__).resolve().parents[2]


def _tree_equal(a, b) -> bool:
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  return tree_a == tree_b and all(
      np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b))


@pytest.fixture(scope="module")
def torch_ref():
  """(reference network, its random state dict as numpy)."""
  require_module("torch", "pip install torch==2.13.0")
  # Imported after the check: the reference module imports torch.
  from tests.torch_ref import (  # pylint: disable=g-import-not-at-top
      fid_inception)
  ref = fid_inception.FIDInceptionRef().eval()
  fid_inception.randomize(ref, seed=0)
  state = {k: v.numpy() for k, v in ref.state_dict().items()}
  return ref, state


@pytest.fixture(scope="module")
def params(torch_ref):
  return inception.fid_inception_params(torch_ref[1], "random state")


@pytest.fixture(scope="module")
def images_299():
  # Two uint8 images of an odd size: clean-fid resizes them to 299.
  return np.random.default_rng(0).integers(0, 256, (2, 180, 230, 3),
                                           dtype=np.uint8)


def test_pool3_matches_the_torch_reference(torch_ref, params, images_299):
  import torch  # pylint: disable=g-import-not-at-top
  x = resize.clean_fid_inputs(images_299)
  with torch.no_grad():
    want = torch_ref[0](torch.from_numpy(nchw(x))).numpy()
  got = fid.inception_features(inception.FIDInception(), params, x)
  assert got.shape == (2, inception.FEATURES)
  assert want.std() > 0.5  # random BN stats kept the activations alive
  # Measured: max |diff| 4e-7 of max |want| (float32 on both sides).
  assert_close_scaled(got, want, rtol=1e-4, name="pool3")
  # image_features = clean resize + the same network (same program).
  np.testing.assert_array_equal(
      fid.image_features(inception.FIDInception(), params, images_299), got)


def test_pth_and_safetensors_give_the_same_params(torch_ref, params,
                                                  tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  state = torch_ref[1]
  pth = str(tmp_path / "pt_inception-2015-12-05-6726825d.pth")
  # What pytorch-fid's file holds: the torchvision Inception3 state dict,
  # with fc.* and BatchNorm's num_batches_tracked, which are ignored.
  assert "fc.weight" in state
  assert "Mixed_7c.branch_pool.bn.num_batches_tracked" in state
  torch.save({k: torch.from_numpy(v) for k, v in state.items()}, pth)
  st = str(tmp_path / "inception.safetensors")
  write_safetensors(st, state)
  module, from_pth = inception.load_fid_inception(pth)
  _, from_st = inception.load_fid_inception(st)
  assert isinstance(module, inception.FIDInception)
  for a, b in ((from_pth, params), (from_st, params)):
    assert _tree_equal(a, b)
  assert from_pth["Mixed_5b"]["branch5x5_2"]["conv"]["kernel"].shape == (
      5, 5, 48, 64)
  # The converter CLI writes a safetensors copy with the same params.
  out = str(tmp_path / "converted.safetensors")
  res = subprocess.run(
      [sys.executable, "-m", "hart_jax.convert_fid_inception",
       f"--pth={pth}", f"--out={out}"], capture_output=True, text=True,
      timeout=300, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
  assert res.returncode == 0, res.stderr
  assert "wrote" in res.stdout
  assert _tree_equal(inception.load_fid_inception(out)[1], params)


def test_missing_file_says_what_to_download(tmp_path):
  path = str(tmp_path / "weights" / "pt_inception.pth")
  with pytest.raises(InputError) as e:
    inception.load_fid_inception(path)
  message = str(e.value)
  assert path in message and inception.FID_WEIGHTS_URL in message
  assert "never downloads" in message


def test_bad_keys_are_named(torch_ref, tmp_path):
  state = dict(torch_ref[1])
  del state["Mixed_6b.branch7x7_2.bn.running_var"]
  state["Conv2d_1a_3x3.conv.weight"] = np.zeros((32, 3, 5, 5), np.float32)
  path = str(tmp_path / "bad.safetensors")
  write_safetensors(path, state)
  with pytest.raises(CheckpointError,
                     match=r"Conv2d_1a_3x3.conv.weight has shape "
                     r"\[32, 3, 5, 5\], expected \[32, 3, 3, 3\]; missing "
                     r"Mixed_6b.branch7x7_2.bn.running_var"):
    inception.load_fid_inception(path)


def test_sharded_features_equal_single_device(params):
  """11 images on the 8-device mesh (data 4 x fsdp 2): two chunks of 8,
  the second padded; the same features as on one device."""
  x = np.random.default_rng(1).uniform(
      -1, 1, (11, inception.MIN_SIZE, inception.MIN_SIZE, 3)).astype(
          np.float32)
  module = inception.FIDInception()
  single = fid.inception_features(module, params, x, batch_size=8)
  mesh = sharding.make_mesh({"data": 4, "fsdp": 2})
  sharded = fid.inception_features(module, params, x, mesh=mesh,
                                   batch_size=8)
  assert sharded.shape == (11, inception.FEATURES)
  # Not bitwise: XLA sums a conv over a batch of 1 per device in another
  # order than over 8 (measured 2e-6 of the largest feature).
  assert_close_scaled(sharded, single, rtol=1e-5, name="sharded")


def test_inputs_below_75_pixels_are_refused(params):
  with pytest.raises(InputError, match="at least 75x75"):
    fid.inception_features(inception.FIDInception(), params,
                           np.zeros((2, 64, 80, 3), np.float32))


def test_pytorch_fid_resize_matches_torch_bilinear():
  torch = require_module("torch", "pip install torch==2.13.0")
  rng = np.random.default_rng(2)
  for shape in ((1, 40, 57, 3), (1, 320, 410, 3)):  # up and down
    x = rng.uniform(0, 1, shape).astype(np.float32)
    want = torch.nn.functional.interpolate(
        torch.from_numpy(nchw(x)), size=(299, 299), mode="bilinear",
        align_corners=False).numpy().transpose(0, 2, 3, 1)
    got = np.asarray(inception.pytorch_fid_inputs(x))
    np.testing.assert_allclose(got, 2 * want - 1, atol=2e-6)
