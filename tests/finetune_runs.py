"""A small official folder and three 2-step fine-tunes of it, made once per
test process and shared by the tests that export, import and inspect them
(tests/test_finetune.py, tests/interop/test_export_import.py).

The folder is what a user downloads, at CPU size: a text-to-image llm/
(model.safetensors and an ema_model.bin that differs from it) and a
tokenizer/. The runs start from it with `train.init_from`:
  full    every parameter trains (unrolled blocks);
  frozen  diffusion head, norms and the last block train, the rest is
          frozen (scanned blocks: the last block is a row slice);
  lora    rank-4 adapters (alpha 8: scale 2) on q, v, out and down.
"""

import atexit
import dataclasses
import functools
import pathlib
import shutil
import tempfile

import jax
import ml_collections
import numpy as np

from configs import tiny
from hart_jax import trainer
from hart_jax.interop import export_run
from hart_jax.interop import official_transformer as otr
from tests import tiny_folders

MODES = {
    "full": dict(scan_layers=False),
    "frozen": dict(scan_layers=True,
                   train_only="diffusion_head+norms+last_blocks:1"),
    "lora": dict(scan_layers=False, lora_rank=4, lora_alpha=8.0,
                 lora_targets="q+v+out+down"),
}


@dataclasses.dataclass
class Runs:
  root: pathlib.Path
  official: pathlib.Path         # llm/ + tokenizer/
  workdirs: dict                 # mode -> run folder
  exports: dict                  # mode -> export folder (EMA weights)


def write_official(folder: pathlib.Path) -> None:
  tok = tiny_folders.write_tokenizer(folder / "tokenizer")
  config = tiny_folders.write_llm(folder / "llm", tok)
  params = otr.init_params(config, jax.random.key(1))
  # An EMA that differs from the raw weights, so a test can tell them apart.
  ema = jax.tree.map(lambda x: np.asarray(x) * 0.75 + 0.01, params)
  otr.save_transformer(str(folder / "llm"), config, params, ema)


def finetune_config(official: pathlib.Path, mode: str, steps: int = 2):
  """tiny.py's text-conditioned HART stage on the official folder's
  model, starting from it, in one of MODES."""
  options = dict(MODES[mode])
  t_config, _ = otr.load_transformer(str(official / "llm"),
                                     "model.safetensors")
  model = dataclasses.asdict(t_config.replace(
      scan_layers=options.pop("scan_layers")))
  model["patch_nums"] = list(model["patch_nums"])
  config = tiny.get_config(f"cond=text,steps={steps}")
  with config.unlocked():
    config.mesh.data = 1
    config.sample.every = 0
    config.model = ml_collections.ConfigDict(model)
    config.tokenizer.folder = str(official / "tokenizer")
    config.train.init_from = str(official)
    config.finetune = ml_collections.ConfigDict(dict(
        train_only="", lora_rank=0, lora_alpha=0.0, lora_targets=""))
    config.finetune.update(options)
  return config


@functools.lru_cache(maxsize=None)
def runs() -> Runs:
  root = pathlib.Path(tempfile.mkdtemp(prefix="hart_finetune_"))
  atexit.register(shutil.rmtree, root, ignore_errors=True)
  official = root / "release"
  write_official(official)
  workdirs, exports = {}, {}
  for mode in MODES:
    workdirs[mode] = root / mode
    trainer.train_and_evaluate(finetune_config(official, mode),
                               str(workdirs[mode]))
    exports[mode] = root / f"{mode}_export"
    export_run.export_run(str(workdirs[mode]), str(exports[mode]))
  return Runs(root, official, workdirs, exports)
