"""Checks of a training run that cost seconds, done before any compile or
write: a mistake in the config, the mesh or a path is one clear error and
leaves nothing behind.

Each check names the field or flag and what it expected. The model's own
fields are checked by its config dataclass when the stage is built (also
before any compile or write).
"""

import math
import os
import tempfile

import numpy as np

from hart_jax.errors import ConfigError, InputError
from hart_jax.sharding import MESH_AXES

_STAGES = ("hart", "tokenizer")


def _int_at_least(config, field: str, low: int) -> int:
  section, _, key = field.rpartition(".")
  node = config
  for part in section.split(".") if section else []:
    node = node[part]
  if key not in node:
    raise ConfigError(f"config has no {field} (required)")
  value = node[key]
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ConfigError(f"{field} must be an integer, got {value!r}")
  if value < low:
    raise ConfigError(f"{field} must be >= {low}, got {value}")
  return int(value)


def check_config(config) -> None:
  """The loop's own fields: stage, steps, batch, cadences, optimizer."""
  if config.get("stage") not in _STAGES:
    raise ConfigError(f"stage must be one of {_STAGES} (or 'demo'), got "
                      f"{config.get('stage')!r}")
  for section in ("train", "optimizer", "mesh", "data"):
    if section not in config:
      raise ConfigError(f"config has no {section!r} section")
  total = _int_at_least(config, "train.total_steps", 1)
  batch = _int_at_least(config, "train.batch_size", 1)
  _int_at_least(config, "train.log_every", 1)
  _int_at_least(config, "train.ckpt_every", 1)
  _int_at_least(config, "train.keep_last", 1)
  accum = _int_at_least(config, "train.grad_accum", 1)
  _int_at_least(config, "train.max_nonfinite_steps", 1)
  if config.train.get("keep_every"):
    _int_at_least(config, "train.keep_every", 0)
  if batch % accum:
    raise ConfigError(f"train.batch_size {batch} is not divisible by "
                      f"train.grad_accum {accum}")
  warmup = _int_at_least(config, "optimizer.warmup_steps", 0)
  if warmup >= total and total > 1:
    raise ConfigError(
        f"optimizer.warmup_steps ({warmup}) must be smaller than "
        f"train.total_steps ({total}): the whole run would be warmup; "
        "lower one or raise the other")
  opt = config.optimizer
  if opt.lr < 0:  # NaN passes: the non-finite guard is tested with it
    raise ConfigError(f"optimizer.lr must be >= 0, got {opt.lr}")
  if not 0 <= opt.ema_decay <= 1:
    raise ConfigError(f"optimizer.ema_decay must be in [0, 1], got "
                      f"{opt.ema_decay}")
  # The fine-tune section (frozen parts, LoRA targets) names its mistakes.
  from hart_jax import finetune  # pylint: disable=g-import-not-at-top
  finetune.spec_from_config(config)
  if "sample" in config:
    every = _int_at_least(config, "sample.every", 0)
    if every and "num_images" in config.sample:
      _int_at_least(config, "sample.num_images", 1)
    if config.sample.get("cfg", 0) < 0 or not math.isfinite(
        config.sample.get("cfg", 0)):
      raise ConfigError(f"sample.cfg must be a finite number >= 0, got "
                        f"{config.sample.cfg}")
    if config.sample.get("top_k", 0) < 0:
      raise ConfigError(f"sample.top_k must be >= 0 (0: off), got "
                        f"{config.sample.top_k}")
  if not isinstance(config.data.get("source"), str) or not config.data.source:
    raise ConfigError("data.source is empty: name a source, e.g. "
                      "folder:/path/to/images (see hart_jax/data)")
  _int_at_least(config, "data.image_size", 8)


def mesh_sizes(config, device_count: int) -> dict[str, int]:
  """The mesh the config asks for, resolved against the device count."""
  mesh = dict(config.mesh)
  unknown = sorted(set(mesh) - set(MESH_AXES))
  if unknown:
    raise ConfigError(f"mesh has unknown axes {unknown}; the axes are "
                      f"{', '.join(MESH_AXES)}")
  sizes = {}
  for axis in MESH_AXES:
    value = mesh.get(axis, 1)
    if isinstance(value, bool) or not isinstance(value, int) or (
        value < 1 and value != -1):
      raise ConfigError(f"mesh.{axis} must be a positive integer or -1 "
                        f"(fill the remaining devices), got {value!r}")
    sizes[axis] = value
  fill = [a for a, v in sizes.items() if v == -1]
  if len(fill) > 1:
    raise ConfigError(f"only one mesh axis may be -1, got {fill}")
  known = int(np.prod([v for v in sizes.values() if v != -1]))
  fixed = " x ".join(f"{a} {v}" for a, v in sizes.items() if v not in (-1, 1))
  if known > device_count:
    raise ConfigError(
        f"the mesh ({fixed}) needs {known} devices; this run has "
        f"{device_count}. Set --config.mesh.data / fsdp / tensor to fit")
  if fill:
    if device_count % known:
      raise ConfigError(
          f"the mesh's fixed axes ({fixed}: {known} devices) do not divide "
          f"the {device_count} devices this run has")
    sizes[fill[0]] = device_count // known
  return sizes


def check_batch(config, sizes: dict[str, int], process_count: int) -> None:
  """The global batch must split evenly over hosts and data axes."""
  batch = int(config.train.batch_size)
  accum = int(config.train.grad_accum)
  if batch % process_count:
    raise ConfigError(f"train.batch_size {batch} does not split over "
                      f"{process_count} processes")
  ways = sizes["data"] * sizes["fsdp"]
  if (batch // accum) % ways:
    raise ConfigError(
        f"train.batch_size {batch}" + (f" / grad_accum {accum}" if accum > 1
                                       else "")
        + f" does not divide over the mesh's data axes (data {sizes['data']}"
        f" x fsdp {sizes['fsdp']} = {ways}); use a multiple of {ways}")


def check_workdir(workdir: str) -> None:
  """The workdir is, or can become, a writable directory (nothing is
  created: a probe file is written and removed in its nearest existing
  ancestor)."""
  if not workdir:
    raise ConfigError("--workdir is empty")
  path = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(path) and not os.path.isdir(path):
    raise InputError(f"--workdir {workdir} is a file, not a directory")
  probe_dir = path
  while not os.path.exists(probe_dir):
    probe_dir = os.path.dirname(probe_dir)
  if not os.path.isdir(probe_dir):
    raise InputError(f"--workdir {workdir}: {probe_dir} is a file")
  try:
    with tempfile.TemporaryFile(dir=probe_dir):
      pass
  except OSError as e:
    raise InputError(f"--workdir {workdir} is not writable ({probe_dir}: "
                     f"{e.strerror})") from e


def check_init_from(config) -> None:
  """train.init_from names a hart_jax run with a checkpoint, or (HART
  stage) an official HART folder whose transformer fits the config."""
  source = config.train.get("init_from")
  if not source:
    return
  if not os.path.isdir(source):
    raise InputError(f"train.init_from {source}: no such directory")
  from hart_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from hart_jax.models.hart.config import from_config_dict  # pylint: disable=g-import-not-at-top
  if checkpointing.is_official_folder(source):
    if config.stage != "hart":
      raise ConfigError(f"train.init_from {source} is an official HART "
                        "folder: the tokenizer stage starts from its "
                        f"tokenizer with init_tokenizer={source}/tokenizer")
    checkpointing.check_official_source(source,
                                        from_config_dict(config.model))
    return
  checkpoints = os.path.join(source, "checkpoints")
  steps = [n for n in (os.listdir(checkpoints) if os.path.isdir(checkpoints)
                       else []) if n.isdigit()]
  if not steps:
    raise InputError(f"train.init_from {source} is not a hart_jax run with "
                     "a checkpoint (no checkpoints/<step>/ in it) nor an "
                     "official HART folder (llm/ + tokenizer/)")


def check_stage_paths(config) -> None:
  """Folders and files a stage will read, so a typo fails before the
  stage spends time building."""
  tokenizer = config.get("tokenizer", {}).get("folder") if (
      config.stage == "hart") else config.get("init_tokenizer")
  field = "tokenizer.folder" if config.stage == "hart" else "init_tokenizer"
  if tokenizer and not os.path.isfile(os.path.join(tokenizer,
                                                   "config.json")):
    what = ("does not exist" if not os.path.exists(tokenizer)
            else "has no config.json")
    raise InputError(f"{field} {tokenizer} {what}: it must be a HART "
                     "tokenizer/ folder (official, or exported by the "
                     "tokenizer stage)")
  weights = config.get("lpips_weights")
  if weights and not os.path.isfile(weights):
    raise InputError(f"lpips_weights {weights}: no such file")
