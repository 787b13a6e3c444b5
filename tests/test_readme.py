"""The README runs as written: every Python snippet, and every
`python -m hart_jax.X` command of its bash blocks.

Snippets run in a folder holding small random official-layout folders
under the names the README uses (hart-0.7b-1024px/{tokenizer,llm}, the
Qwen2 folder). Commands run with their placeholders (DIR, /data/images,
...) pointed at folders made here; training commands get `--dry_run`,
which checks config, mesh, paths and data without compiling (the runs
themselves are covered by train_test.py and the demo is CI's own job);
export and import write into a fresh folder each.
"""

import json
import os
import pathlib
import re
import shlex
import struct

import numpy as np
from PIL import Image
import pytest

from configs import hart_0p7b_1024
from configs import tiny
from hart_jax import trainer
from hart_jax.interop import import_run
from hart_jax.interop import official_init
from hart_jax.interop.official_configs import (tokenizer_config_to_official,
                                               transformer_config_to_official)
from hart_jax.models.hart.config import from_config_dict
from hart_jax.models.tokenizer.config import TokenizerConfig
from tests import cli_runner
from tests import finetune_runs
from tests import tiny_folders

REPO = pathlib.Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def python_snippets() -> list[str]:
  return re.findall(r"```python\n(.*?)```", README, re.S)


def hart_jax_commands() -> list[str]:
  """`python -m hart_jax.X ...` commands of the bash blocks, continuation
  lines joined, comments dropped; `A=...` assignments substituted."""
  commands = []
  for block in re.findall(r"```bash\n(.*?)```", README, re.S):
    text = block.replace("\\\n", " ")
    assigned = {}
    for line in text.splitlines():
      line = line.split("  #")[0].strip()
      match = re.match(r"^([A-Z]+)=(\S+)$", line)
      if match:
        assigned[match.group(1)] = match.group(2)
        continue
      for part in line.split("&&"):
        part = part.strip()
        if part.startswith("python -m hart_jax."):
          for name, value in assigned.items():
            part = part.replace(f"${name}", value)
          commands.append(part)
  return commands


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  root = tmp_path_factory.mktemp("readme")
  tok = tiny_folders.write_tokenizer(root / "hart-0.7b-1024px" / "tokenizer")
  tiny_folders.write_llm(root / "hart-0.7b-1024px" / "llm", tok)
  tiny_folders.write_qwen2(root / "Qwen2-VL-1.5B-Instruct")
  # The demo's run, as its HART stage records it (a 1-step tiny one).
  config = tiny.get_config("stage=hart,steps=1")
  with config.unlocked():
    config.mesh.data = 1
    config.sample.every = 0
  trainer.train_and_evaluate(config, str(root / "out" / "demo" / "hart"))
  return root


def test_the_readme_has_what_this_test_covers():
  assert len(python_snippets()) >= 2
  names = {c.split()[2] for c in hart_jax_commands()}
  assert {"hart_jax.train", "hart_jax.tokenize", "hart_jax.sample",
          "hart_jax.export", "hart_jax.import_official"} <= names


@pytest.mark.parametrize("index", range(len(python_snippets())))
def test_python_snippet_runs_as_written(index, folders, monkeypatch):
  monkeypatch.chdir(folders)
  exec(compile(python_snippets()[index], f"README snippet {index}", "exec"),  # pylint: disable=exec-used
       {"__name__": "readme_snippet"})


def _placeholders(root: pathlib.Path) -> dict[str, str]:
  """README placeholder -> a folder or file made here."""
  images = root / "data" / "images"
  images.mkdir(parents=True, exist_ok=True)
  for i in range(2):
    Image.fromarray(np.full((32, 32, 3), 60 * i, np.uint8)).save(
        images / f"{i}.png")
    (images / f"{i}.txt").write_text(f"a picture number {i}")
  Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(root / "in.png")
  # The 0.7B curriculum reads the previous stage's run; a dry run only
  # checks that it is one.
  (root / "out" / "256" / "checkpoints" / "1").mkdir(parents=True,
                                                     exist_ok=True)
  (root / "out" / "512" / "checkpoints" / "1").mkdir(parents=True,
                                                     exist_ok=True)
  # What the export commands read: a workdir, imported from a small
  # official folder with EMA weights.
  if not (root / "out" / "ft" / "config.json").exists():
    finetune_runs.write_official(root / "small_release")
    import_run.import_official(str(root / "small_release"),
                               str(root / "out" / "ft"))
  return {"/data/images": str(images),
          "/data/features.npz": str(root / "features.npz"),
          "DIR": str(root / "hart-0.7b-1024px" / "tokenizer")}


def _release_shaped(root: pathlib.Path) -> pathlib.Path:
  """An official folder with the release's config files (0.7B, official
  tokenizer) and a header-only model.safetensors: a fine-tune's dry run
  reads the configs and the weights' keys and shapes, never the tensors."""
  folder = root / "release_shape" / "hart-0.7b-1024px"
  if not (folder / "llm" / "config.json").exists():
    (folder / "llm").mkdir(parents=True)
    (folder / "tokenizer").mkdir(parents=True)
    model = from_config_dict(hart_0p7b_1024.model_config(1024))
    (folder / "llm" / "config.json").write_text(json.dumps(
        transformer_config_to_official(model)))
    header = json.dumps({
        k: dict(dtype="F32", shape=list(v), data_offsets=[0, 0])
        for k, v in official_init.expected_shapes(model).items()}).encode()
    (folder / "llm" / "model.safetensors").write_bytes(
        struct.pack("<Q", len(header)) + header)
    (folder / "tokenizer" / "config.json").write_text(json.dumps(
        tokenizer_config_to_official(TokenizerConfig())))
  return folder


@pytest.mark.parametrize("command", hart_jax_commands())
def test_command_runs_as_written(command, folders, tmp_path):
  """Run from `folders` (the README's relative paths resolve there)."""
  for placeholder, value in _placeholders(folders).items():
    command = command.replace(placeholder, value)
  if "hart_0p7b_finetune" in command:
    # Its dry run checks the official folder's shapes against the 0.7B.
    command = command.replace("hart=hart-0.7b-1024px",
                              f"hart={_release_shaped(folders)}")
  args = shlex.split(command)
  module = args[2]
  if module in ("hart_jax.export", "hart_jax.import_official"):
    # Each writes a fresh folder of its own.
    args = [a if not a.startswith("--out=") else
            f"--out={tmp_path / os.path.basename(a[len('--out='):])}"
            for a in args]
  if module == "hart_jax.train":
    # Each training command gets its own fresh workdir.
    args = [a if not a.startswith("--workdir=") else
            f"--workdir={tmp_path / 'run'}" for a in args]
    args.append("--dry_run")
  res = cli_runner.run_module(module, args[3:], folders, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  if module == "hart_jax.train":
    assert "dry run: config, mesh, paths and data are valid" in res.stdout
    assert not (tmp_path / "run").exists()
