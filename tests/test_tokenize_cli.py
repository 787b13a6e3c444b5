"""`python -m hart_jax.tokenize`: the round-trip CLI, end to end."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from hart_jax import tokenize

ASSET = pathlib.Path(tokenize.__file__).parent / "assets" / "astronaut_256.png"


def _cli(*args, cwd=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "hart_jax.tokenize", *args],
                        capture_output=True, text=True, env=env, cwd=cwd,
                        timeout=600, check=False)


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
  folder = tmp_path_factory.mktemp("cli") / "tok"
  tokenize.write_random_tokenizer(str(folder), seed=0, shape="tiny",
                                  overwrite=False)
  return folder


def test_init_random_round_trip_via_cli(tmp_path):
  out = tmp_path / "out" / "recon.png"
  res = _cli(f"--tokenizer={tmp_path / 'tok'}", "--init_random",
             "--init_config=tiny", f"--image={ASSET}", f"--out={out}")
  assert res.returncode == 0, res.stderr
  assert "PSNR" in res.stdout and "hybrid" in res.stdout
  for path in (out, tmp_path / "out" / "recon_discrete.png"):
    with Image.open(path) as img:
      assert img.size == (256, 256) and img.mode == "RGB"
  assert (tmp_path / "tok" / "config.json").exists()
  assert (tmp_path / "tok" / "model.safetensors").exists()


def test_hybrid_beats_discrete_and_psnr_is_right(tiny_tokenizer, tmp_path):
  out = tmp_path / "r.png"
  r = tokenize.run(str(tiny_tokenizer), str(ASSET), str(out))
  src = np.asarray(Image.open(ASSET).convert("RGB")).astype(np.float64)
  rec = np.asarray(Image.open(out)).astype(np.float64)
  want = 10 * np.log10(255.0 ** 2 / np.mean((src - rec) ** 2))
  np.testing.assert_allclose(r["psnr_hybrid"], want, rtol=1e-9)
  # The continuous residual makes the latent exact, so hybrid can only be
  # as good or better in latent space; in pixels it must not be worse by
  # much even for random weights.
  assert r["psnr_hybrid"] > r["psnr_discrete"] - 1.0


def test_other_sizes_are_cropped_and_resized(tiny_tokenizer, tmp_path,
                                             caplog):
  img = tmp_path / "wide.png"
  rgb = np.asarray(Image.open(ASSET).convert("RGB"))
  Image.fromarray(rgb).resize((300, 200)).save(img)
  r = tokenize.run(str(tiny_tokenizer), str(img), str(tmp_path / "o.png"))
  assert r["size"] == 256
  text = caplog.text
  assert "center-cropped to 200x200" in text
  assert "resized from 200px to 256px" in text


def test_corrupt_image_is_one_clear_error(tmp_path, tiny_tokenizer):
  bad = tmp_path / "bad.png"
  bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
  res = _cli(f"--tokenizer={tiny_tokenizer}", f"--image={bad}",
             f"--out={tmp_path / 'o.png'}")
  assert res.returncode == 2
  assert res.stderr.strip().splitlines()[-1].startswith(
      f"error: cannot read image {bad}")
  assert "Traceback" not in res.stderr


def test_init_random_refuses_to_overwrite(tiny_tokenizer):
  before = (tiny_tokenizer / "model.safetensors").read_bytes()
  with pytest.raises(ValueError, match="already holds a tokenizer"):
    tokenize.write_random_tokenizer(str(tiny_tokenizer), seed=1,
                                    shape="tiny", overwrite=False)
  assert (tiny_tokenizer / "model.safetensors").read_bytes() == before
