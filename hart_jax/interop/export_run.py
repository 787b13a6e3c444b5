"""A training workdir -> official HART folders (`llm/` + `tokenizer/`).

What `python -m hart_jax.export` runs. A HART-stage run gives both
folders: `llm/` (config.json, model.safetensors with the raw weights,
ema_model.bin with the EMA ones, which the official sampler loads with
strict key matching) and `tokenizer/` (the run's frozen tokenizer, from
its config's `tokenizer` section). A tokenizer-stage run gives
`tokenizer/` only. A partial fine-tune (frozen parts, LoRA) exports the
merged model, so the official code loads a plain one.

Everything is checked before anything is written (the run's config, the
checkpoint's fields, the output folder), and the output folder appears
whole or not at all: both subfolders are written into a temporary sibling
that replaces `out` in one step.
"""

import dataclasses
import os
from typing import Optional

from hart_jax import atomic_io
from hart_jax import checkpointing
from hart_jax import run_config
from hart_jax.errors import CheckpointError, ConfigError, InputError
from hart_jax.interop import official_tokenizer, official_transformer
from hart_jax.interop.official_configs import load_tokenizer_config
from hart_jax.models.hart.config import from_config_dict
from hart_jax.models.tokenizer.config import TokenizerConfig

WEIGHTS = ("ema", "raw")
FORMATS = ("safetensors", "bin")
# What an earlier export (which --overwrite may replace) holds.
_EXPORT_ENTRIES = {"llm", "tokenizer"}


@dataclasses.dataclass
class ExportResult:
  """What was written, for the CLI's report."""
  out: str
  workdir: str
  stage: str
  step: int
  weights: str
  folders: dict[str, list[str]]
  notes: list[str]


def resolve_workdir(path: str) -> tuple[str, list[str]]:
  """The run folder to read: `path`, or the demo's HART stage inside it."""
  if not os.path.isdir(path):
    raise InputError(f"--checkpoint {path}: no such directory")
  if (not os.path.isfile(os.path.join(path, run_config.FILE))
      and os.path.isfile(os.path.join(path, "hart", run_config.FILE))):
    return (os.path.join(path, "hart"),
            [f"{path} is the demo's workdir: exporting its HART stage "
             f"({os.path.join(path, 'hart')})"])
  return path, []


def _inside(path: str, folder: str) -> bool:
  path, folder = os.path.realpath(path), os.path.realpath(folder)
  return path == folder or path.startswith(folder + os.sep)


def check_out(out: str, workdir: str, overwrite: bool) -> None:
  """--out must not touch the run, and replaces only an earlier export."""
  if not out:
    raise ConfigError("--out is empty: give the folder to write")
  if _inside(out, os.path.join(workdir, "checkpoints")):
    raise InputError(f"--out {out} is inside the run's checkpoint folder "
                     f"{os.path.join(workdir, 'checkpoints')}: export "
                     "somewhere else")
  if _inside(workdir, out):
    raise InputError(f"--out {out} holds the run {workdir} itself: export "
                     "somewhere else")
  if not os.path.lexists(out):
    return
  if not os.path.isdir(out):
    raise InputError(f"--out {out} is a file; give a folder path")
  if not overwrite:
    raise InputError(f"--out {out} already exists; pass --overwrite to "
                     "replace it")
  others = sorted(set(os.listdir(out)) - _EXPORT_ENTRIES)
  if others:
    raise InputError(f"--out {out} holds more than an export (llm/, "
                     f"tokenizer/): {others[:5]}; not replacing it, even "
                     "with --overwrite")


def _check_torch(what: str) -> None:
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise CheckpointError(f"writing {what} needs torch (pip install "
                          "'hart_jax[torch]')") from e


def _tokenizer_config(config) -> TokenizerConfig:
  """A tokenizer-stage run's tokenizer shape (as the trainer builds it)."""
  if config.get("init_tokenizer"):
    return load_tokenizer_config(os.path.join(config.init_tokenizer,
                                              "config.json"))
  return TokenizerConfig(**dict(config.model))


def export_run(checkpoint: str, out: str, step: Optional[int] = None,
               weights: str = "ema", weights_format: str = "safetensors",
               overwrite: bool = False) -> ExportResult:
  """Writes `out`/llm and `out`/tokenizer from a training workdir.

  Args:
    checkpoint: a training workdir (either stage, either block layout), or
      the demo's workdir (its HART stage is exported).
    out: the folder to write; it must not exist unless `overwrite`, and may
      then only hold an earlier export.
    step: the checkpoint to read (default: the newest).
    weights: "ema" (the EMA weights go to ema_model.bin and the tokenizer;
      the raw ones to model.safetensors) or "raw" (raw weights everywhere).
    weights_format: "safetensors" or "bin" (pytorch_model.bin) for the
      weights the official `from_pretrained` reads; ema_model.bin is always
      a torch pickle, as the official sampler reads it.
    overwrite: replace an existing export at `out`.

  Returns:
    An ExportResult describing what was written.
  """
  if weights not in WEIGHTS:
    raise ConfigError(f"--weights must be one of {WEIGHTS}, got {weights!r}")
  if weights_format not in FORMATS:
    raise ConfigError(f"--format must be one of {FORMATS}, got "
                      f"{weights_format!r}")
  workdir, notes = resolve_workdir(checkpoint)
  config = run_config.load_run_config(workdir)
  stage = config.get("stage")
  if stage not in ("hart", "tokenizer"):
    raise CheckpointError(f"{workdir}/{run_config.FILE}: stage {stage!r} "
                          "cannot be exported (hart or tokenizer)")
  check_out(out, workdir, overwrite)
  if stage == "hart":
    _check_torch("llm/ema_model.bin")
  elif weights_format == "bin":
    _check_torch("tokenizer/pytorch_model.bin")
  step, stored = checkpointing.checkpoint_items(workdir, step)
  if weights == "ema" and "ema_params" not in stored:
    raise CheckpointError(
        f"--weights=ema: checkpoint {step} of {workdir} holds no EMA "
        "weights (imported from a folder without ema_model.bin?); use "
        "--weights=raw")
  key = "ema_params" if weights == "ema" else "params"
  writers = {}
  if stage == "hart":
    model = from_config_dict(config.model)
    keys = ("params", "ema_params") if weights == "ema" else ("params",)
    _, items = checkpointing.read_state_items(workdir, keys, step)
    tok_config, tok_vars = official_tokenizer.frozen_tokenizer_variables(
        config)
    writers["llm"] = lambda p: official_transformer.save_transformer(
        p, model, items["params"], items[key],
        weights_format=weights_format)
    if model.num_classes:
      notes.append(
          "class-conditional model: llm/config.json has model_type "
          "hart_transformer_c2i, for which the official code has no model "
          "class; hart_jax loads it back, the official sampler cannot")
  else:
    tok_config = _tokenizer_config(config)
    _, items = checkpointing.read_state_items(workdir, (key, "extra"), step)
    extra = items["extra"]
    tok_vars = {"vae": {"params": items[key], "buffers": extra["buffers"]},
                "disc": {"params": extra["disc_params"],
                         "batch_stats": extra["disc_stats"]}}
  writers["tokenizer"] = lambda p: official_tokenizer.save_tokenizer(
      p, tok_config, tok_vars, weights_format=weights_format)
  atomic_io.atomic_write_folder(out, writers)
  folders = {name: sorted(os.listdir(os.path.join(out, name)))
             for name in writers}
  return ExportResult(out=out, workdir=workdir, stage=stage, step=int(step),
                      weights=weights, folders=folders, notes=notes)
