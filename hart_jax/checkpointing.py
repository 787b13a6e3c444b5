"""orbax checkpoints of the TrainState and the data iterator.

Restore order, first that applies: (1) the newest readable checkpoint in
this run's workdir (automatic resume after preemption; an unreadable one is
reported by name and the previous one is tried); (2) `init_from`: params
(and EMA) of another run, converted to this run's shapes (resolution
curriculum); (3) a fresh initialisation.
"""

import logging
import os
from typing import Any, Optional

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp

from hart_jax.models.hart import layer_stack


def make_manager(workdir: str, keep_last: int, keep_every: Optional[int],
                 async_save: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep_last, keep_period=keep_every or None,
      enable_async_checkpointing=async_save, create=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir),
                                            "checkpoints"), options=options)


def save(manager: ocp.CheckpointManager, step: int, state,
         data_state: Optional[dict]) -> None:
  items = dict(state=ocp.args.StandardSave(state))
  if data_state is not None:
    items["data"] = ocp.args.JsonSave(data_state)
  manager.save(step, args=ocp.args.Composite(**items))


def restore_latest(manager: ocp.CheckpointManager, abstract_state,
                   with_data: bool):
  """(state, data_state, step) of the newest restorable checkpoint, or None.

  A checkpoint that fails to restore (truncated, corrupt, wrong shapes) is
  named in the log with its error, and the previous one is tried.
  """
  for step in sorted(manager.all_steps(), reverse=True):
    items = dict(state=ocp.args.StandardRestore(abstract_state))
    if with_data:
      items["data"] = ocp.args.JsonRestore()
    try:
      out = manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # orbax raises many types for bad checkpoints
      logging.error("checkpoint at step %d in %s cannot be restored (%s: "
                    "%s); falling back to the previous one", step,
                    manager.directory, type(e).__name__, e)
      continue
    return out["state"], (out["data"] if with_data else None), step
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
  manager = ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"),
      item_handlers={"state": ocp.PyTreeCheckpointHandler()})
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {workdir}")
  meta = manager.item_metadata(step)["state"]
  missing = [k for k in keys if k not in meta]
  if missing:
    raise ValueError(f"checkpoint {step} in {workdir} has no {missing}")
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
    raise ValueError("init_from: checkpoint does not fit this model: "
                     + "; ".join(problems))
  return flax.traverse_util.unflatten_dict(out)


def data_state_to_json(state: Any) -> dict:
  """grain iterator state -> JSON (bytes are stored as latin-1 text)."""
  if isinstance(state, bytes):
    return {"bytes": state.decode("latin-1")}
  return {"value": state}


def data_state_from_json(obj: dict) -> Any:
  return obj["bytes"].encode("latin-1") if "bytes" in obj else obj["value"]
