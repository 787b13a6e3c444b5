"""The few lines a training run prints: a header and a closing summary."""

import os
from typing import Optional

import jax
import numpy as np


def human_count(n: int) -> str:
  for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
    if n >= size:
      return f"{n / size:.{2 if n < 10 * size else 1}f}{unit}"
  return str(n)


def param_count(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def header(config, stage_name: str, params, mesh, source,
           workdir: str) -> list[str]:
  """Stage, model size, mesh, data, batch, steps, where outputs go."""
  mesh_text = " ".join(f"{k}={v}" for k, v in mesh.shape.items())
  devices = jax.devices()
  kind = devices[0].platform
  procs = jax.process_count()
  where = f"{mesh.size} {kind} device{'s' if mesh.size > 1 else ''}" + (
      f", {procs} processes" if procs > 1 else "")
  try:
    n_examples = f"{len(source):,} examples, "
  except TypeError:
    n_examples = ""
  name = config.data.source
  return [
      f"hart_jax train: {stage_name} stage, "
      f"{human_count(param_count(params))} params, mesh {mesh_text} "
      f"({where})",
      f"data: {name} ({n_examples}{config.data.image_size}px), batch "
      f"{config.train.batch_size}, {config.train.total_steps} steps",
      f"outputs: {os.path.abspath(workdir)} (checkpoints/, metrics.jsonl, "
      "samples/, tensorboard/, train.log)",
  ]


def summary(workdir: str, step: int, total: int, seconds: float,
            compile_seconds: float, metrics: dict,
            export_dir: Optional[str]) -> list[str]:
  """Where everything went, and the last loss."""
  loss = f", loss {metrics['loss']:.4f}" if "loss" in metrics else ""
  lines = [f"done: step {step} of {total} in {seconds:.1f} s (+ "
           f"{compile_seconds:.1f} s compile){loss}"]
  rows = [("checkpoint", os.path.join(workdir, "checkpoints", str(step))),
          ("samples", os.path.join(workdir, "samples", "latest.png")),
          ("metrics", os.path.join(workdir, "metrics.jsonl")),
          ("tensorboard", os.path.join(workdir, "tensorboard")),
          ("log", os.path.join(workdir, "train.log"))]
  if export_dir:
    rows.append(("export", export_dir))
  for label, path in rows:
    if os.path.exists(path):
      lines.append(f"  {label:<11} {os.path.abspath(path)}")
  return lines
