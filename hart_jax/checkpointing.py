"""orbax checkpoints of the TrainState and the data iterator.

Restore order, first that applies: (1) the newest readable checkpoint in
this run's workdir (automatic resume after preemption; an unreadable one is
reported by name, moved aside and the previous one used); (2) `init_from`: params
(and EMA) of another run, or the transformer + diffusion head of an
official HART folder (`llm/` + `tokenizer/`, e.g. the release), converted
to this run's shapes (resolution curriculum, fine-tuning); (3) a fresh
initialisation.
"""

import errno
import logging
import os
import time
from typing import Any, Optional

import flax
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from hart_jax import finetune
from hart_jax import run_config
from hart_jax.errors import CheckpointError
from hart_jax.interop import official_init
from hart_jax.interop import official_transformer
from hart_jax.models.hart import layer_stack
from hart_jax.models.hart.config import from_config_dict


DAMAGED_DIR = "checkpoints_damaged"


def make_manager(workdir: str, keep_last: int, keep_every: Optional[int],
                 async_save: bool = True) -> ocp.CheckpointManager:
  """The run's manager; temporary folders of an interrupted save (a killed
  or out-of-space run) are removed when it opens."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep_last, keep_period=keep_every or None,
      enable_async_checkpointing=async_save, create=True,
      cleanup_tmp_directories=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir),
                                            "checkpoints"), options=options)


def _out_of_space(e: BaseException) -> bool:
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
      return True
    if "No space left on device" in str(e):
      return True
    e = e.__cause__ or e.__context__
  return False


def _checked(manager: ocp.CheckpointManager, what: str, call):
  """Runs a save or wait; a full disk becomes one clear error."""
  try:
    return call()
  except Exception as e:  # pylint: disable=broad-except  # orbax wraps OSError
    if not _out_of_space(e):
      raise
    kept = sorted(manager.all_steps())
    raise CheckpointError(
        f"disk full while {what} in {manager.directory}: the checkpoint was "
        f"not written; the earlier ones ({', '.join(map(str, kept)) or 'none'}"
        ") are intact. Free space and rerun the same command to resume"
    ) from e


def save(manager: ocp.CheckpointManager, step: int, state,
         data_state: Optional[dict]) -> None:
  """Saves (asynchronously); raises if orbax declines to write the step."""
  items = dict(state=ocp.args.StandardSave(state))
  if data_state is not None:
    items["data"] = ocp.args.JsonSave(data_state)
  saved = _checked(manager, f"writing the checkpoint of step {step}",
                   lambda: manager.save(step, args=ocp.args.Composite(
                       **items)))
  if not saved:
    raise CheckpointError(
        f"the checkpoint of step {step} was not written: {manager.directory}"
        f" already holds step {manager.latest_step()}; use another workdir "
        "or remove the newer checkpoints")


def wait(manager: ocp.CheckpointManager) -> None:
  """Blocks until pending saves are on disk (full disk: one clear error)."""
  _checked(manager, "finishing a checkpoint", manager.wait_until_finished)


def _move_aside(manager: ocp.CheckpointManager, steps) -> list[str]:
  """Renames unreadable step folders into checkpoints_damaged/ (never
  deletes them), so that a later save of the same step can succeed."""
  root = os.path.dirname(os.path.abspath(str(manager.directory)))
  moved = []
  if jax.process_index() == 0:
    for step in steps:
      src = os.path.join(str(manager.directory), str(step))
      dst = os.path.join(root, DAMAGED_DIR, f"step_{step}")
      if os.path.exists(dst):
        dst += time.strftime("_%Y%m%d-%H%M%S")
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      os.rename(src, dst)
      moved.append(dst)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("hart_jax_moved_damaged_checkpoints")
  manager.reload()
  return moved


def restore_latest(manager: ocp.CheckpointManager, abstract_state,
                   with_data: bool, discard_unreadable: bool = False):
  """(state, data_state, step) of the newest restorable checkpoint, or None
  when the workdir has none.

  Unreadable checkpoints newer than the restored one (truncated, corrupt,
  wrong shapes) are named in a warning and moved to checkpoints_damaged/,
  so they are not tried again and their steps can be saved anew. When no
  checkpoint can be restored the run stops with an error naming them, and
  moves them aside to start over only if `discard_unreadable`.
  """
  failures = []
  for step in sorted(manager.all_steps(), reverse=True):
    items = dict(state=ocp.args.StandardRestore(abstract_state))
    if with_data:
      items["data"] = ocp.args.JsonRestore()
    try:
      out = manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except  # orbax raises many types for bad checkpoints
      reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
      failures.append((step, f"{type(e).__name__}: {reason}"))
      continue
    if failures:
      moved = _move_aside(manager, [s for s, _ in failures])
      logging.warning(
          "unreadable checkpoint(s) %s moved to %s; resuming from step %d",
          "; ".join(f"step {s} ({why})" for s, why in failures),
          os.path.dirname(moved[0]) if moved else DAMAGED_DIR, step)
    return out["state"], (out["data"] if with_data else None), step
  if not failures:
    return None
  listing = "; ".join(f"step {s} ({why})" for s, why in failures)
  if not discard_unreadable:
    raise CheckpointError(
        f"no checkpoint in {manager.directory} can be restored: {listing}. "
        "Nothing was changed. If the config changed, use the config that "
        "wrote them; to start over from step 0, rerun with "
        "--discard_unreadable_checkpoints (they are moved to "
        f"{DAMAGED_DIR}/, not deleted)")
  _move_aside(manager, [s for s, _ in failures])
  logging.warning("every checkpoint was unreadable (%s): moved to %s/, "
                  "starting from step 0", listing, DAMAGED_DIR)
  return None


def abstract_of(tree):
  """ShapeDtypeStructs with shardings, for restoring onto the same mesh."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=x.sharding), tree)


def is_official_folder(path: str) -> bool:
  """An official HART folder (as released): llm/config.json inside."""
  return os.path.isfile(os.path.join(path, "llm", "config.json"))


def load_params_from(path: str, abstract_params, use_ema: bool = True):
  """(params, step) of another run's newest checkpoint or of an official
  HART folder, converted to `abstract_params` (this run's shapes/layout).

  The resolution curriculum changes `patch_nums`; with the released flags
  (timestep level embedding, RoPE, no absolute positions) no parameter
  depends on it. The schedule-dependent ones are converted explicitly:
  - `lvl_embed` (learned table, [K, C]): rows of common levels are copied;
    new levels start from the last old level's row.
  - `pos_1LC` (gpt2 only, [1, S, C]): the context part and the common
    prefix are copied; the rest keeps its fresh initialisation.
  Any other mismatch is an error naming the first mismatched parameter
  and both shapes. An official folder gives its EMA weights
  (ema_model.bin) when it has them, and step 0; a run whose checkpoint has
  no EMA (imported from a folder without ema_model.bin) gives its params.
  """
  if is_official_folder(path):
    llm = os.path.join(path, "llm")
    weights = None
    if not use_ema:
      weights = next((n for n in ("model.safetensors", "pytorch_model.bin")
                      if os.path.exists(os.path.join(llm, n))), None)
    _, params = official_transformer.load_transformer(llm, weights)
    return convert_params(params, abstract_params, path), 0
  key = "ema_params" if use_ema else "params"
  step, names = checkpoint_items(path)
  if key not in names:
    logging.info("init_from: %s has no %s; using its params", path, key)
    key = "params"
  step, source = read_state_items(path, (key,), step)
  return convert_params(source[key], abstract_params, path), step


def init_state_from(state, path: str):
  """(state with `path`'s params and EMA, source step): the default
  `Stage.init_from` (the same tree structure on both sides)."""
  params, step = load_params_from(path, jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state.params))
  return put_params(state, params, params), step


def put_params(state, params, ema):
  """`state` with host `params` and `ema` placed like its own params (two
  separate copies: the state is donated to the step)."""
  put = lambda tree: jax.tree.map(
      lambda v, ref: jax.device_put(v, ref.sharding), tree, state.params)
  return state.replace(params=put(params), ema_params=put(ema))


def check_official_source(path: str, target_config) -> None:
  """Before anything is built or written: does the official folder at
  `path` hold a transformer of `target_config`'s shapes? Reads its config
  files and its weights file's key set and shapes (not the tensors;
  hart_jax/interop/official_init.py); names the first parameter that does
  not fit and both shapes."""
  # Both unrolled: abstract shapes cannot be restacked, and the layout
  # changes no shape that matters here.
  unrolled = lambda c: official_transformer.abstract_params(c.replace(
      scan_layers=False))
  convert_params(unrolled(official_init.source_config(path)),
                 unrolled(target_config), path, shapes_only=True)


def read_state_items(workdir: str, keys, step: Optional[int] = None):
  """(step, {key: tree}) of some TrainState fields of a run's checkpoint
  (default: the newest), as arrays in host memory.

  Any topology can read it: the run that wrote it may have used another
  mesh, device count or number of processes (the curriculum's stages
  usually do). Only the named fields are read. For a partial fine-tune
  (frozen parts or LoRA, hart_jax/finetune.py) `params` and `ema_params`
  are the model's full params (trained part merged with the frozen one,
  adapters folded in), so every reader sees a plain model.
  """
  partition = _partition_of(workdir)
  merged = [k for k in keys if k in ("params", "ema_params")]
  if partition is not None and merged:
    wanted = tuple(dict.fromkeys(tuple(keys) + ("extra",)))
    step, items = read_stored_items(workdir, wanted, step)
    frozen = items["extra"]["frozen"]
    # On the host: a reader (export, sampling setup) must not fill an
    # accelerator with a second copy of the model.
    with jax.default_device(jax.devices("cpu")[0]):
      for k in merged:
        items[k] = jax.device_get(partition.merge(items[k], frozen))
    return step, {k: items[k] for k in keys}
  return read_stored_items(workdir, keys, step)


def _partition_of(workdir: str):
  """The run's fine-tune Partition (None: a plain run or no config)."""
  if not os.path.isfile(os.path.join(workdir, run_config.FILE)):
    return None
  config = run_config.load_run_config(workdir)
  if config.get("stage") != "hart" or not config.get("finetune"):
    return None
  return finetune.partition_for(config, from_config_dict(config.model))


def checkpoint_items(workdir: str, step: Optional[int] = None):
  """(step, names of the TrainState fields stored) of a run's checkpoint
  (default: the newest), from its metadata only."""
  manager, step = _reader(workdir, step)
  return step, set(_metadata(manager, workdir, step))


def _reader(workdir: str, step: Optional[int]):
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(directory):
    what = ("does not exist" if not os.path.exists(workdir)
            else "is not a hart_jax run (it has no checkpoints/ folder)")
    raise CheckpointError(f"{workdir} {what}")
  # Read-only: reading another run must never create or clean anything.
  manager = ocp.CheckpointManager(
      directory, item_handlers={"state": ocp.PyTreeCheckpointHandler()},
      options=ocp.CheckpointManagerOptions(read_only=True, create=False))
  step = manager.latest_step() if step is None else step
  if step is None:
    raise CheckpointError(f"{workdir}: no checkpoint in {directory}")
  if step not in manager.all_steps():
    raise CheckpointError(f"{workdir}: no checkpoint of step {step} (it has "
                          f"{sorted(manager.all_steps())})")
  return manager, step


def _metadata(manager, workdir: str, step: int):
  try:
    return manager.item_metadata(step)["state"]
  except Exception as e:  # pylint: disable=broad-except  # orbax: many types
    raise CheckpointError(f"{workdir}: checkpoint {step} cannot be read "
                          f"({type(e).__name__}: {e})") from e


def read_stored_items(workdir: str, keys, step: Optional[int] = None):
  """read_state_items without the fine-tune merge: the fields as stored
  (a partial fine-tune's trained tree, adapters, `extra`)."""
  manager, step = _reader(workdir, step)
  meta = _metadata(manager, workdir, step)
  missing = [k for k in keys if k not in meta]
  if missing:
    raise CheckpointError(f"checkpoint {step} in {workdir} has no {missing}")
  host = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  wanted = {k: meta[k] for k in keys}
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(
          item=jax.tree.map(lambda m: jax.ShapeDtypeStruct(
              m.shape, m.dtype, sharding=host), wanted),
          restore_args=jax.tree.map(
              lambda _: ocp.ArrayRestoreArgs(sharding=host), wanted),
          partial_restore=True)))["state"]
  return step, jax.device_get(restored)


def convert_params(source, target_abstract, where: str = "the source",
                   shapes_only: bool = False):
  """Copies `source` into the shapes of `target_abstract` (see
  load_params_from); `shapes_only` checks without copying (`source` may be
  abstract). A mismatch names the first parameter that does not fit."""
  src = flax.traverse_util.flatten_dict(layer_stack.match_layout(
      source if shapes_only else jax.device_get(source), target_abstract))
  dst = flax.traverse_util.flatten_dict(target_abstract)
  out, problems = {}, []
  for path, spec in dst.items():
    name = "/".join(path)
    if path not in src:
      problems.append(f"{name} is missing there (this model has it, "
                      f"{list(spec.shape)})")
      continue
    value = src[path] if shapes_only else np.asarray(src[path])
    shape, want = tuple(value.shape), tuple(spec.shape)
    if shape == want:
      out[path] = value
    elif path[-1] == "lvl_embed" and len(shape) == 2:
      if not shapes_only:
        out[path] = np.stack([value[min(i, shape[0] - 1)]
                              for i in range(want[0])])
        logging.info("init_from: %s converted %s -> %s", name, shape, want)
    elif path[-1] == "pos_1LC" and len(shape) == 3:
      if not shapes_only:
        new = np.zeros(want, value.dtype)
        n = min(shape[1], want[1])
        new[:, :n] = value[:, :n]
        out[path] = new
        logging.info("init_from: %s converted %s -> %s", name, shape, want)
    else:
      problems.append(f"{name} is {list(shape)} there but {list(want)} in "
                      "this model")
  extra = sorted("/".join(p) for p in set(src) - set(dst))
  if extra:
    problems.append(f"{extra[0]} is not in this model")
  if problems:
    more = (f" ({len(problems) - 1} more mismatch(es))"
            if len(problems) > 1 else "")
    raise CheckpointError(f"train.init_from {where} does not fit this "
                          f"model: {problems[0]}{more}")
  return None if shapes_only else flax.traverse_util.unflatten_dict(out)


def data_state_to_json(state: Any) -> dict:
  """grain iterator state -> JSON (bytes are stored as latin-1 text)."""
  if isinstance(state, bytes):
    return {"bytes": state.decode("latin-1")}
  return {"value": state}


def data_state_from_json(obj: dict) -> Any:
  return obj["bytes"].encode("latin-1") if "bytes" in obj else obj["value"]
