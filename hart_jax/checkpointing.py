"""orbax checkpoints of the TrainState and the data iterator.

Restore order, first that applies: (1) the newest readable checkpoint in
this run's workdir (automatic resume after preemption; an unreadable one is
reported by name, moved aside and the previous one used); (2) `init_from`: params
(and EMA) of another run, converted to this run's shapes (resolution
curriculum); (3) a fresh initialisation.
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

from hart_jax.errors import CheckpointError
from hart_jax.models.hart import layer_stack


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


def load_params_from(workdir: str, abstract_params, use_ema: bool = True):
  """Params of another run's newest checkpoint, converted to this run.

  The resolution curriculum changes `patch_nums`; with the released flags
  (timestep level embedding, RoPE, no absolute positions) no parameter
  depends on it. The schedule-dependent ones are converted explicitly:
  - `lvl_embed` (learned table, [K, C]): rows of common levels are copied;
    new levels start from the last old level's row.
  - `pos_1LC` (gpt2 only, [1, S, C]): the context part and the common
    prefix are copied; the rest keeps its fresh initialisation.
  Any other shape mismatch is an error naming the parameter.
  """
  key = "ema_params" if use_ema else "params"
  step, source = read_state_items(workdir, (key,))
  return convert_params(source[key], abstract_params), step


def read_state_items(workdir: str, keys, step: Optional[int] = None):
  """(step, {key: tree}) of some TrainState fields of a run's checkpoint
  (default: the newest), as arrays in host memory.

  Any topology can read it: the run that wrote it may have used another
  mesh, device count or number of processes (the curriculum's stages
  usually do). Only the named fields are read.
  """
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
  try:
    meta = manager.item_metadata(step)["state"]
  except Exception as e:  # pylint: disable=broad-except  # orbax: many types
    raise CheckpointError(f"{workdir}: checkpoint {step} cannot be read "
                          f"({type(e).__name__}: {e})") from e
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


def convert_params(source, target_abstract):
  """Copies `source` into the shapes of `target_abstract` (see above)."""
  src = flax.traverse_util.flatten_dict(layer_stack.match_layout(
      jax.device_get(source), target_abstract))
  dst = flax.traverse_util.flatten_dict(target_abstract)
  out, problems = {}, []
  for path, spec in dst.items():
    name = "/".join(path)
    if path not in src:
      problems.append(f"{name}: missing in the source checkpoint")
      continue
    value = np.asarray(src[path])
    if value.shape == tuple(spec.shape):
      out[path] = value
    elif path[-1] == "lvl_embed" and value.ndim == 2:
      rows = [value[min(i, value.shape[0] - 1)] for i in range(spec.shape[0])]
      out[path] = np.stack(rows)
      logging.info("init_from: %s converted %s -> %s", name, value.shape,
                   spec.shape)
    elif path[-1] == "pos_1LC" and value.ndim == 3:
      new = np.zeros(spec.shape, value.dtype)
      n = min(value.shape[1], spec.shape[1])
      new[:, :n] = value[:, :n]
      out[path] = new
      logging.info("init_from: %s converted %s -> %s", name, value.shape,
                   spec.shape)
    else:
      problems.append(f"{name}: source {value.shape} vs target "
                      f"{tuple(spec.shape)}")
  extra = sorted("/".join(p) for p in set(src) - set(dst))
  if extra:
    problems.append(f"not in the target model: {extra[:10]}")
  if problems:
    raise CheckpointError("init_from: checkpoint does not fit this model: "
                     + "; ".join(problems))
  return flax.traverse_util.unflatten_dict(out)


def data_state_to_json(state: Any) -> dict:
  """grain iterator state -> JSON (bytes are stored as latin-1 text)."""
  if isinstance(state, bytes):
    return {"bytes": state.decode("latin-1")}
  return {"value": state}


def data_state_from_json(obj: dict) -> Any:
  return obj["bytes"].encode("latin-1") if "bytes" in obj else obj["value"]
