"""Official HART folders (`llm/` + `tokenizer/`) -> a hart_jax workdir.

What `python -m hart_jax.import_official` runs. The workdir holds:
  checkpoints/0/  an orbax checkpoint of the weights only: `params` (from
                  model.safetensors or pytorch_model.bin), `ema_params`
                  (from ema_model.bin) and `step` 0. No optimizer state:
                  its shape depends on the optimizer config of whoever
                  trains next, and `train.init_from` takes only the
                  weights. When the folder has only one of the two files,
                  both fields come from it (noted); without ema_model.bin
                  the checkpoint has no `ema_params` at all, so nothing
                  passes the raw weights off as an EMA.
  tokenizer/      a byte-for-byte copy of the folder's tokenizer (checked by
                  loading it first), so the workdir does not depend on the
                  downloaded folder staying where it is.
  config.json     a run config (stage "hart") whose `model` is the llm
                  config and whose `tokenizer.folder` is the copy above (an
                  absolute path, as the demo records it), from which
                  sampling and export rebuild the model and tokenizer.
                  A text model records `text_encoder.kind=qwen2` with the
                  path given (or empty: sampling then asks for it).
Every check (folders, key sets, shapes, config fields) runs before anything
is written, and the workdir appears whole or not at all.
"""

import dataclasses
import os
import shutil
from typing import Optional

import jax
import ml_collections
import numpy as np

from hart_jax import atomic_io
from hart_jax import checkpointing
from hart_jax import run_config
from hart_jax.errors import ConfigError, InputError
from hart_jax.interop import official_tokenizer, official_transformer

RAW_FILES = ("model.safetensors", "pytorch_model.bin")
EMA_FILE = "ema_model.bin"
# What an earlier import (which --overwrite may replace) holds.
_IMPORT_ENTRIES = {"checkpoints", "config.json", "config.txt", "tokenizer"}


@dataclasses.dataclass
class ImportResult:
  """What was written, for the CLI's report."""
  out: str
  params_from: str
  ema_from: Optional[str]
  tokenizer_files: list[str]
  class_conditional: bool
  notes: list[str]


def _check_paths(hart_dir: str, out: str, overwrite: bool) -> None:
  if not os.path.isdir(hart_dir):
    raise InputError(f"--hart_dir {hart_dir}: no such directory")
  for sub in ("llm", "tokenizer"):
    if not os.path.isfile(os.path.join(hart_dir, sub, "config.json")):
      raise InputError(f"--hart_dir {hart_dir} has no {sub}/config.json: "
                       "it must be an official HART folder (llm/ + "
                       "tokenizer/, as in mit-han-lab/hart-0.7b-1024px)")
  if not out:
    raise ConfigError("--out is empty: give the workdir to write")
  real_out, real_src = os.path.realpath(out), os.path.realpath(hart_dir)
  if real_src == real_out or real_src.startswith(real_out + os.sep):
    raise InputError(f"--out {out} holds --hart_dir {hart_dir} itself: "
                     "write the workdir somewhere else")
  if not os.path.lexists(out):
    return
  if not os.path.isdir(out):
    raise InputError(f"--out {out} is a file; give a folder path")
  if not overwrite:
    raise InputError(f"--out {out} already exists; pass --overwrite to "
                     "replace it")
  others = sorted(set(os.listdir(out)) - _IMPORT_ENTRIES)
  if others:
    raise InputError(f"--out {out} holds more than an imported workdir: "
                     f"{others[:5]}; not replacing it, even with "
                     "--overwrite")


def _copy_file(src: str, dst: str) -> None:
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  shutil.copyfile(src, dst)
  with open(dst, "rb") as f:
    os.fsync(f.fileno())


def run_config_for(t_config, tokenizer_folder: str, hart_dir: str,
                   text_encoder: str) -> ml_collections.ConfigDict:
  """The run config of an imported workdir (what readers of a workdir
  need: stage, model, tokenizer, text encoder; and where it came from)."""
  model = dataclasses.asdict(t_config)
  model["patch_nums"] = list(model["patch_nums"])
  config = ml_collections.ConfigDict(dict(
      stage="hart", seed=0, model=model,
      tokenizer=dict(folder=tokenizer_folder),
      imported_from=dict(path=os.path.abspath(hart_dir))))
  if not t_config.num_classes:
    config.text_encoder = dict(kind="qwen2", qwen2=dict(path=text_encoder))
  return config


def import_official(hart_dir: str, out: str, overwrite: bool = False,
                    text_encoder: str = "") -> ImportResult:
  """Writes the hart_jax workdir `out` from the official folder `hart_dir`.

  Args:
    hart_dir: an official HART folder (llm/ + tokenizer/).
    out: the workdir to write; it must not exist unless `overwrite`, and
      may then only hold an earlier import.
    overwrite: replace an earlier import at `out`.
    text_encoder: a local Qwen2 folder to record for sampling (text
      models); empty leaves it to whoever samples.

  Returns:
    An ImportResult describing what was written.
  """
  _check_paths(hart_dir, out, overwrite)
  llm = os.path.join(hart_dir, "llm")
  tok_dir = os.path.join(hart_dir, "tokenizer")
  raw_file = next((n for n in RAW_FILES
                   if os.path.exists(os.path.join(llm, n))), None)
  has_ema = os.path.exists(os.path.join(llm, EMA_FILE))
  if raw_file is None and not has_ema:
    raise InputError(f"{llm}: no weights file (looked for "
                     f"{', '.join(RAW_FILES + (EMA_FILE,))})")
  notes = []
  ema = None
  if has_ema:
    t_config, ema = official_transformer.load_transformer(llm, EMA_FILE)
  if raw_file:
    t_config, params = official_transformer.load_transformer(llm, raw_file)
  else:
    params = ema
    notes.append(f"{llm} has no {' or '.join(RAW_FILES)}: the params are "
                 f"the EMA weights of {EMA_FILE}")
  if not has_ema:
    notes.append(f"{llm} has no {EMA_FILE}: the checkpoint holds no EMA "
                 "(init_from and sampling use the params; export needs "
                 "--weights=raw)")
  tok_config, _ = official_tokenizer.load_tokenizer(tok_dir)
  if (tok_config.vocab_size, tok_config.z_channels) != (
      t_config.vocab_size, t_config.latent_channels):
    raise InputError(
        f"{tok_dir}: the tokenizer has vocab_size {tok_config.vocab_size} "
        f"and z_channels {tok_config.z_channels}, but {llm}'s head and "
        f"word_embed expect {t_config.vocab_size} and "
        f"{t_config.latent_channels}")
  tok_files = ["config.json", os.path.basename(
      official_tokenizer.find_weights(tok_dir))]
  config = run_config_for(t_config, os.path.join(os.path.abspath(out),
                                                 "tokenizer"),
                          hart_dir, text_encoder)
  state = {"step": np.int32(0), "params": params}
  if ema is not None:
    state["ema_params"] = ema
  state = jax.device_put(state, jax.devices("cpu")[0])

  def write_checkpoint(path):
    manager = checkpointing.make_manager(os.path.dirname(path), keep_last=1,
                                         keep_every=None, async_save=False)
    checkpointing.save(manager, 0, state, None)
    checkpointing.wait(manager)
    manager.close()

  def copy_tokenizer(path):
    for name in tok_files:
      _copy_file(os.path.join(tok_dir, name), os.path.join(path, name))

  atomic_io.atomic_write_folder(out, {
      "checkpoints": write_checkpoint,
      "tokenizer": copy_tokenizer,
      run_config.FILE: lambda p: atomic_io.atomic_write_bytes(
          p, config.to_json(indent=2).encode()),
      "config.txt": lambda p: atomic_io.atomic_write_bytes(
          p, str(config).encode()),
  })
  return ImportResult(out=out, params_from=raw_file or EMA_FILE,
                      ema_from=EMA_FILE if has_ema else None,
                      tokenizer_files=tok_files,
                      class_conditional=bool(t_config.num_classes),
                      notes=notes)
