"""train_and_evaluate(config, workdir): the training loop of every stage.

Mesh from config -> stage state created sharded -> data iterator -> resume
(or init_from) -> AOT-compiled step (memory logged) -> loop with progress
bar, TensorBoard scalars, sample grids, async checkpoints, and a stop with
a clear message after too many non-finite steps in a row.
"""

import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from hart_jax import checkpointing
from hart_jax import image_io
from hart_jax import sharding
from hart_jax.data import source_from_config
from hart_jax.data.pipeline import global_batch, make_dataset
from hart_jax.stages import hart_stage, tokenizer_stage
from hart_jax.stages.common import peak_flops_per_device

STAGES = {"hart": hart_stage.build, "tokenizer": tokenizer_stage.build}


class NonFiniteError(RuntimeError):
  """Too many consecutive steps with a NaN/Inf loss or gradient."""


def _writer(workdir: str):
  if jax.process_index() != 0:
    return None
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  return SummaryWriter(os.path.join(workdir, "tensorboard"))


def _numeric(batch: dict) -> dict:
  """The arrays that enter the jitted step (captions etc. stay on host)."""
  return {k: v for k, v in batch.items()
          if isinstance(v, np.ndarray) and v.dtype.kind in "fiub"
          and k != "skipped"}


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Trains one stage (or the demo's two) and returns the last metrics."""
  if config.get("stage") == "demo":
    return _run_demo(config, workdir)
  os.makedirs(workdir, exist_ok=True)
  mesh = sharding.make_mesh(dict(config.mesh))
  rules = sharding.rules_from_config(config.get("rules",
                                                sharding.DEFAULT_RULES))
  logging.info("mesh %s on %d devices (%d processes)", dict(mesh.shape),
               mesh.size, jax.process_count())
  with jax.set_mesh(mesh):
    stage = STAGES[config.stage](config, mesh, rules,
                                 jax.random.key(config.seed))
  state = stage.state

  per_host = config.train.batch_size // jax.process_count()
  source = source_from_config(config.data)
  dataset = make_dataset(source, image_size=config.data.image_size,
                         batch_size=per_host, seed=config.seed,
                         shard_index=jax.process_index(),
                         shard_count=jax.process_count())
  data_iter = iter(dataset)

  manager = checkpointing.make_manager(workdir, config.train.keep_last,
                                       config.train.get("keep_every"))
  restored = checkpointing.restore_latest(
      manager, checkpointing.abstract_of(state), with_data=True)
  if restored is not None:
    state, data_json, start = restored
    data_iter.set_state(checkpointing.data_state_from_json(data_json))
    logging.info("resumed from step %d in %s", start, workdir)
  elif config.train.get("init_from"):
    params, src_step = checkpointing.load_params_from(
        config.train.init_from, jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
            state.params))
    put = lambda tree: jax.tree.map(
        lambda v, ref: jax.device_put(v, ref.sharding), tree, state.params)
    state = state.replace(params=put(params), ema_params=put(params))
    logging.info("initialised from %s (step %d)", config.train.init_from,
                 src_step)

  prepare = stage.host_inputs or (lambda b: b)
  first = prepare(next(data_iter))
  batch_shard = sharding.batch_sharding(mesh)
  compiled = compile_step(stage, state, global_batch(
      _numeric(first), mesh, batch_shard), mesh)
  flops_per_example = stage.flops_per_example
  if flops_per_example is None:
    flops_per_example = _compiled_flops(compiled) / config.train.batch_size
  # (a token-cache batch has no images to preview)
  preview = np.asarray(first["image"][:8]) if "image" in first else None

  total = int(config.train.total_steps)
  start = int(jax.device_get(state.step))
  writer = _writer(workdir)
  peak = peak_flops_per_device()
  metrics, pending, last_log = {}, None, time.time()
  batch = first
  bar = tqdm.tqdm(total=total, initial=start, desc=config.stage,
                  disable=jax.process_index() != 0, dynamic_ncols=True)
  for step in range(start, total):
    if step > start:
      batch = prepare(next(data_iter))
    state, step_metrics = compiled(
        state, global_batch(_numeric(batch), mesh, batch_shard),
        stage.frozen)
    # Check the previous step's streak now: reading it after dispatching
    # this step keeps the host from stalling the device every step.
    if pending is not None:
      streak = int(pending["nonfinite_streak"])
      if streak >= config.train.max_nonfinite_steps:
        raise NonFiniteError(
            f"{streak} consecutive steps had a NaN/Inf loss or gradient "
            f"(last at step {step}); updates were skipped and the run is "
            "stopped. Lower the learning rate or check the data.")
    pending = step_metrics
    done = step + 1
    bar.update(1)
    if done % config.train.log_every == 0 or done == total:
      metrics = {k: float(v) for k, v in jax.device_get(
          step_metrics).items()}
      elapsed = time.time() - last_log
      last_log = time.time()
      steps = config.train.log_every if done % config.train.log_every == 0 \
          else done % config.train.log_every
      ex_s = steps * config.train.batch_size / max(elapsed, 1e-9)
      metrics.update(images_per_s=ex_s,
                     tokens_per_s=ex_s * stage.tokens_per_example,
                     skipped_images=float(batch.get("skipped", 0)))
      if peak:
        metrics["mfu"] = (ex_s * flops_per_example
                          / (peak * jax.device_count()))
      bar.set_postfix(loss=f"{metrics['loss']:.4f}",
                      ips=f"{ex_s:.1f}")
      if writer:
        for k, v in metrics.items():
          writer.add_scalar(f"{config.stage}/{k}", v, done)
        writer.flush()
        with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
          f.write(json.dumps(dict(step=done, **metrics)) + "\n")
    if done % config.train.ckpt_every == 0 or done == total:
      checkpointing.save(manager, done, state,
                         checkpointing.data_state_to_json(
                             data_iter.get_state()))
    if (stage.sample and config.sample.every
        and (done % config.sample.every == 0 or done == total)):
      _write_samples(stage, state, workdir, done, writer, preview)
  bar.close()
  manager.wait_until_finished()
  if stage.export and config.get("export_dir"):
    stage.export(state, config.export_dir)
  if writer:
    writer.close()
  return metrics


def compile_step(stage, state, example_batch, mesh):
  """The stage's step jitted once with explicit shardings and the state
  donated, compiled ahead of time (its memory use is logged)."""
  state_shardings = jax.tree.map(lambda x: x.sharding, state)
  frozen_shardings = jax.tree.map(lambda x: x.sharding if isinstance(
      x, jax.Array) else None, stage.frozen)
  jitted = jax.jit(stage.step, in_shardings=(
      state_shardings, jax.tree.map(lambda x: x.sharding, example_batch),
      frozen_shardings), out_shardings=(state_shardings, None),
                   donate_argnums=0)
  t0 = time.time()
  with jax.set_mesh(mesh):
    compiled = jitted.lower(state, example_batch, stage.frozen).compile()
  _log_compile(compiled, time.time() - t0)
  return compiled


def _compiled_flops(compiled) -> float:
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0))
  except Exception:  # pylint: disable=broad-except  # backend-dependent
    return 0.0


def _write_samples(stage, state, workdir, step, writer, preview):
  grid = stage.sample(state, stage.frozen, step, preview)
  if grid is None or jax.process_index() != 0:
    return
  path = os.path.join(workdir, "samples", f"step_{step:06d}.png")
  image_io.save_png(path, grid)
  image_io.save_png(os.path.join(workdir, "samples", "latest.png"), grid)
  if writer:
    writer.add_image(f"{stage.name}/samples", grid, step, dataformats="HWC")


def _log_compile(compiled, seconds):
  try:
    mem = compiled.memory_analysis()
    logging.info("train step compiled in %.1f s; per device: args %.1f MiB, "
                 "outputs %.1f MiB, temps %.1f MiB", seconds,
                 mem.argument_size_in_bytes / 2**20,
                 mem.output_size_in_bytes / 2**20,
                 mem.temp_size_in_bytes / 2**20)
  except Exception:  # pylint: disable=broad-except  # not every backend
    logging.info("train step compiled in %.1f s", seconds)


def _run_demo(config, workdir):
  """The embedded default: a small tokenizer, then a small HART on it."""
  tok_dir = os.path.join(workdir, "tokenizer")
  with config.unlocked():
    config.tokenizer_stage.export_dir = os.path.join(tok_dir, "export")
  train_and_evaluate(config.tokenizer_stage, tok_dir)
  with config.unlocked():
    config.hart_stage.tokenizer.folder = os.path.join(
        tok_dir, "export", "tokenizer")
  return train_and_evaluate(config.hart_stage,
                            os.path.join(workdir, "hart"))
