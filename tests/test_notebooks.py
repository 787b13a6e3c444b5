"""Every notebook runs top to bottom in a real Jupyter kernel (nbclient),
as Colab would run it, on checkpoints this test makes.

The install cell runs too: it installs nothing when hart_jax is importable
(as here), which is what it does on a runtime that already has it.
"""

import os
import pathlib

import nbclient
import nbformat
import pytest

from configs import tiny
from hart_jax import trainer
from tests import tiny_folders

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
REPO = NOTEBOOKS.parent


def execute(name: str, cwd: pathlib.Path, env: dict[str, str]):
  """Runs notebooks/<name> in a fresh kernel; returns the executed cells."""
  nb = nbformat.read(NOTEBOOKS / name, as_version=4)
  # The kernel inherits this process's environment.
  saved = dict(os.environ)
  os.environ.update(env, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
                    XLA_FLAGS="--xla_force_host_platform_device_count=1")
  try:
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}}
                            ).execute()
  finally:
    os.environ.clear()
    os.environ.update(saved)
  return nb.cells


def _outputs(cells) -> str:
  text = []
  for cell in cells:
    for out in cell.get("outputs", []):
      text.append(out.get("text", "") + str(out.get("data", {}).get(
          "text/plain", "")))
  return "\n".join(text)


def test_there_are_notebooks():
  assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == [
      "01_sampling.ipynb", "02_tokenizer_recon.ipynb"]


def test_sampling_notebook_on_a_training_workdir(tmp_path):
  config = tiny.get_config("stage=hart,steps=1")
  with config.unlocked():
    config.mesh.data = 1
    config.sample.every = 0
  trainer.train_and_evaluate(config, str(tmp_path / "run"))
  cells = execute("01_sampling.ipynb", tmp_path,
                  {"HART_CHECKPOINT": str(tmp_path / "run")})
  text = _outputs(cells)
  assert "32px images, class-conditional" in text
  assert "AR scales" in text and "PIL.Image.Image image mode=RGB" in text


def test_sampling_notebook_on_official_folders(tmp_path):
  tok = tiny_folders.write_tokenizer(tmp_path / "hart" / "tokenizer")
  tiny_folders.write_llm(tmp_path / "hart" / "llm", tok, context_token=16)
  tiny_folders.write_qwen2(tmp_path / "qwen2", hidden=32)
  cells = execute("01_sampling.ipynb", tmp_path, {
      "HART_CHECKPOINT": str(tmp_path / "hart"),
      "HART_TEXT_ENCODER": str(tmp_path / "qwen2")})
  assert "32px images, text-to-image" in _outputs(cells)


@pytest.mark.parametrize("name", ["02_tokenizer_recon.ipynb"])
def test_other_notebooks_run(name, tmp_path):
  cells = execute(name, tmp_path, {})
  assert "PSNR" in _outputs(cells)
