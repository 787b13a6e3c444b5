"""train_and_evaluate(config, workdir): the training loop of every stage.

Checks (config, mesh, paths: hart_jax/run_checks.py) -> mesh -> stage
state created sharded -> resume (or init_from) -> data iterator ->
AOT-compiled step (memory logged) -> loop with progress bar, TensorBoard
scalars, sample grids, async checkpoints, a save-and-stop on Ctrl-C or
SIGTERM, and a stop with a clear message after too many non-finite steps
in a row. The console gets a short header and summary; the full log goes
to <workdir>/train.log.
"""

import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from hart_jax import checkpointing
from hart_jax import console
from hart_jax import image_io
from hart_jax import run_checks
from hart_jax import run_config
from hart_jax import run_report
from hart_jax import sharding
from hart_jax.data import source_from_config
from hart_jax.data.pipeline import global_batch, make_dataset
from hart_jax.errors import HartError, Stopped
from hart_jax.interop import official_tokenizer, official_transformer
from hart_jax.interop.official_configs import load_tokenizer_config
from hart_jax.metrics_log import MetricsLog
from hart_jax.models.hart.config import from_config_dict
from hart_jax.models.tokenizer.config import TokenizerConfig
from hart_jax.stages import hart_stage, tokenizer_stage
from hart_jax.stages.common import peak_flops_per_device
from hart_jax.stop_requests import StopRequests

STAGES = {"hart": hart_stage.build, "tokenizer": tokenizer_stage.build}


class NonFiniteError(HartError):
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


def train_and_evaluate(config, workdir: str, *,
                       discard_unreadable_checkpoints: bool = False,
                       dry_run: bool = False) -> dict[str, Any]:
  """Trains one stage (or the demo's two) and returns the last metrics.

  Everything that can be checked cheaply (config, mesh, paths, the data
  source, the stage's model and inputs) is checked before anything is
  compiled or written; `dry_run` stops there, after printing the header.
  """
  if config.get("stage") == "demo":
    return _run_demo(config, workdir, discard_unreadable_checkpoints,
                     dry_run)
  run_checks.check_config(config)
  run_checks.check_workdir(workdir)
  sizes = run_checks.mesh_sizes(config, jax.device_count())
  run_checks.check_batch(config, sizes, jax.process_count())
  run_checks.check_init_from(config)
  run_checks.check_stage_paths(config)
  mesh = sharding.make_mesh(sizes)
  rules = sharding.rules_from_config(config.get("rules",
                                                sharding.DEFAULT_RULES))
  source = source_from_config(config.data)
  primary = jax.process_index() == 0
  if dry_run:
    # Shapes only: a dry run of the 0.7B config must not allocate it.
    if primary:
      for line in run_report.header(config, config.stage,
                                    _abstract_params(config), mesh, source,
                                    workdir):
        console.say(line)
      console.say("dry run: config, mesh, paths and data are valid; "
                  "nothing was compiled or written")
    return {}
  with jax.set_mesh(mesh):
    stage = STAGES[config.stage](config, mesh, rules,
                                 jax.random.key(config.seed))
  if primary:
    for line in run_report.header(config, stage.name, stage.state.params,
                                  mesh, source, workdir):
      console.say(line)
  os.makedirs(workdir, exist_ok=True)
  with console.log_file(os.path.join(workdir, "train.log")):
    logging.info("config:\n%s", config)
    try:
      return _train(config, workdir, mesh, stage, source,
                    discard_unreadable_checkpoints)
    except HartError as e:
      # For the record: the console gets it from the entry point.
      logging.info("run stopped: %s", e)
      raise


def _train(config, workdir, mesh, stage, source, discard_unreadable):
  """The loop of train_and_evaluate, once everything is checked."""
  state = stage.state
  primary = jax.process_index() == 0
  total = int(config.train.total_steps)
  manager = checkpointing.make_manager(workdir, config.train.keep_last,
                                       config.train.get("keep_every"))
  metrics_log = MetricsLog(os.path.join(workdir, "metrics.jsonl"))
  restored = checkpointing.restore_latest(
      manager, checkpointing.abstract_of(state), with_data=True,
      discard_unreadable=discard_unreadable)
  data_state = None
  if restored is not None:
    state, data_state, start = restored
    if start >= total:
      if primary:
        run_config.save_run_config(workdir, config)
      manager.close()
      if primary:
        console.say(f"the run in {workdir} is already finished (step "
                    f"{start} of {total}); nothing to do. Raise "
                    "--config.train.total_steps to train further.")
      _export(stage, state, config, only_if_missing=True)
      return metrics_log.last()
    if primary:
      console.say(f"resuming from step {start}")
  elif config.train.get("init_from"):
    # A stage may place the weights itself (the HART stage: an official
    # folder, a partial fine-tune's split); otherwise params and EMA.
    init_from = stage.init_from or checkpointing.init_state_from
    state, src_step = init_from(state, config.train.init_from)
    logging.info("initialised from %s (step %d)", config.train.init_from,
                 src_step)
  start = int(jax.device_get(state.step))
  if primary:
    metrics_log.resume_at(start)
    run_config.save_run_config(workdir, config)

  per_host = config.train.batch_size // jax.process_count()
  dataset = make_dataset(source, image_size=config.data.image_size,
                         batch_size=per_host, seed=config.seed,
                         shard_index=jax.process_index(),
                         shard_count=jax.process_count())
  data_iter = iter(dataset)
  if data_state is not None:
    data_iter.set_state(checkpointing.data_state_from_json(data_state))

  prepare = stage.host_inputs or (lambda b: b)
  first = prepare(next(data_iter))
  batch_shard = sharding.batch_sharding(mesh)
  t0 = time.time()
  compiled = compile_step(stage, state, global_batch(
      _numeric(first), mesh, batch_shard), mesh)
  compile_seconds = time.time() - t0
  flops_per_example = stage.flops_per_example
  if flops_per_example is None:
    flops_per_example = _compiled_flops(compiled) / config.train.batch_size
  # (a token-cache batch has no images to preview)
  preview = np.asarray(first["image"][:8]) if "image" in first else None

  writer = _writer(workdir)
  peak = peak_flops_per_device()
  metrics, pending, last_log = {}, None, time.time()
  loop_start = time.time()
  batch = first
  done = last_saved = start
  bar = tqdm.tqdm(total=total, initial=start, desc=config.stage,
                  disable=not primary, dynamic_ncols=True, leave=False)
  with StopRequests() as stop:
    for step in range(start, total):
      if stop.signal_name:
        break
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
        metrics = _log_metrics(config, stage, step_metrics, batch, done,
                               time.time() - last_log, flops_per_example,
                               peak, bar, writer, metrics_log)
        last_log = time.time()
      if done % config.train.ckpt_every == 0 or done == total:
        checkpointing.save(manager, done, state,
                           checkpointing.data_state_to_json(
                               data_iter.get_state()))
        last_saved = done
      if (stage.sample and config.sample.every
          and (done % config.sample.every == 0 or done == total)):
        _write_samples(stage, state, workdir, done, writer, preview)
    bar.close()
    if stop.signal_name and done > last_saved:
      if primary:
        console.say(f"{stop.signal_name}: saving the checkpoint of step "
                    f"{done} (Ctrl-C again to abandon it)")
      checkpointing.save(manager, done, state,
                         checkpointing.data_state_to_json(
                             data_iter.get_state()))
    checkpointing.wait(manager)
  manager.close()
  if writer:
    writer.close()
  if stop.signal_name:
    raise Stopped(
        f"stopped by {stop.signal_name} at step {done} of {total}; the "
        f"checkpoint is saved in {os.path.join(workdir, 'checkpoints')}: "
        "rerun the same command to resume",
        exit_code=0 if stop.signal_name == "SIGTERM" else 130)
  export_dir = _export(stage, state, config)
  if primary:
    for line in run_report.summary(workdir, done, total,
                                   time.time() - loop_start, compile_seconds,
                                   metrics, export_dir):
      console.say(line)
  return metrics


def _abstract_params(config):
  """The trained params' shapes, from the config alone."""
  if config.stage == "hart":
    return official_transformer.abstract_params(
        from_config_dict(config.model))
  if config.get("init_tokenizer"):
    tok_config = load_tokenizer_config(
        os.path.join(config.init_tokenizer, "config.json"))
  else:
    tok_config = TokenizerConfig(**dict(config.model))
  return official_tokenizer.abstract_variables(tok_config)["vae"]["params"]


def _log_metrics(config, stage, step_metrics, batch, done, elapsed,
                 flops_per_example, peak, bar, writer, metrics_log):
  metrics = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
  every = config.train.log_every
  steps = every if done % every == 0 else done % every
  ex_s = steps * config.train.batch_size / max(elapsed, 1e-9)
  metrics.update(images_per_s=ex_s,
                 tokens_per_s=ex_s * stage.tokens_per_example,
                 skipped_images=float(batch.get("skipped", 0)))
  if peak:
    metrics["mfu"] = (ex_s * flops_per_example
                      / (peak * jax.device_count()))
  bar.set_postfix(loss=f"{metrics['loss']:.4f}", ips=f"{ex_s:.1f}")
  if writer:
    for k, v in metrics.items():
      writer.add_scalar(f"{config.stage}/{k}", v, done)
    writer.flush()
    metrics_log.append(done, metrics)
  return metrics


def _export(stage, state, config, only_if_missing: bool = False):
  """Writes the stage's official folders to config.export_dir (when both
  are set); returns the folder or None. Both stages finish their export
  with tokenizer/, so its config.json marks a complete one."""
  folder = config.get("export_dir")
  if not (stage.export and folder):
    return None
  complete = os.path.isfile(os.path.join(folder, "tokenizer", "config.json"))
  if jax.process_index() == 0 and not (only_if_missing and complete):
    stage.export(state, folder)
  return folder


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


def _run_demo(config, workdir, discard_unreadable, dry_run):
  """The embedded default: a small tokenizer, then a small HART on it."""
  # Absolute: the HART stage's recorded config names the tokenizer folder,
  # and whoever reads the run later may start elsewhere.
  tok_dir = os.path.join(os.path.abspath(workdir), "tokenizer")
  with config.unlocked():
    config.tokenizer_stage.export_dir = os.path.join(tok_dir, "export")
  kwargs = dict(discard_unreadable_checkpoints=discard_unreadable,
                dry_run=dry_run)
  train_and_evaluate(config.tokenizer_stage, tok_dir, **kwargs)
  if dry_run:
    # The HART stage reads the tokenizer the first stage exports.
    return {}
  with config.unlocked():
    config.hart_stage.tokenizer.folder = os.path.join(
        tok_dir, "export", "tokenizer")
  return train_and_evaluate(config.hart_stage,
                            os.path.join(workdir, "hart"), **kwargs)
