"""Runs a frozen metric network over a batch split along the mesh.

The batch's leading axis is sharded over the data-parallel mesh axes
(`hart_jax.sharding.batch_sharding`, as the trainer shards its batches);
the params are replicated. Each chunk is padded to a fixed size that the
data axes divide, so every full chunk and the last one share one compiled
program; the padding rows repeat the last real row (finite values) and are
dropped from the result.

Multi-process runs: every process passes the same inputs (each device
takes its own slice of them) and gets the whole result back, since the
output is replicated.
"""

import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import numpy as np

from hart_jax import sharding
from hart_jax.errors import InputError


@functools.lru_cache(maxsize=64)
def _jitted(module: nn.Module, method: str, mesh):
  """One jitted program per (module, method, mesh); shapes retrace inside.

  Flax modules are frozen dataclasses, equal (and hashing equal) when
  their configs are, so equal networks share the cache entry.
  """

  def apply(params, inputs):
    return module.apply({"params": params}, *inputs, method=method)

  if mesh is None:
    return jax.jit(apply)
  return jax.jit(apply, in_shardings=(sharding.replicated(mesh),
                                      sharding.batch_sharding(mesh)),
                 out_shardings=sharding.replicated(mesh))


data_parallel_size = sharding.data_parallel_size


def place_params(params, mesh):
  """Params replicated on the mesh (or on the default device)."""
  if mesh is None:
    return jax.device_put(params)
  return jax.device_put(params, sharding.replicated(mesh))


def _to_devices(chunk: np.ndarray, mesh):
  if mesh is None:
    return jax.device_put(chunk)
  # make_array_from_callback is right on several processes too: each
  # device copies its slice of the (identical) host batch.
  spec = sharding.batch_sharding(mesh)
  return jax.make_array_from_callback(chunk.shape, spec,
                                      lambda index: chunk[index])


def run_batched(module: nn.Module, method: str, params,
                inputs: Sequence[np.ndarray], mesh=None,
                batch_size: int = 64,
                prepare: Callable[..., Sequence[np.ndarray]] | None = None
                ) -> np.ndarray:
  """`module.<method>(*inputs)` over the batch, in sharded chunks.

  Args:
    module: a Flax module whose `method` maps batched arrays to [B, ...].
    method: the method name ("__call__", "encode_image", ...).
    params: the module's params (placed with `place_params` once by the
      caller to avoid re-copying; numpy or unplaced trees also work).
    inputs: host arrays (or lists, e.g. of images of different sizes
      when `prepare` resizes them) sharing the leading batch axis.
    mesh: a `hart_jax.sharding.make_mesh` mesh, or None for one device.
    batch_size: rows per chunk (rounded up to a multiple of the
      data-parallel size).
    prepare: host-side work applied to each chunk's rows before they go
      to the devices (e.g. resizing), returning the network's inputs; it
      bounds host memory to one chunk of prepared data.

  Returns:
    The outputs of all rows, concatenated, as a float32 numpy array.
  """
  n = len(inputs[0])
  if n == 0:
    raise InputError("no inputs to run the metric network on (batch of 0)")
  ways = data_parallel_size(mesh)
  # Small batches are not padded up to batch_size: fewer wasted rows.
  chunk = min(batch_size, n)
  chunk = -(-chunk // ways) * ways
  fn = _jitted(module, method, mesh)
  params = place_params(params, mesh)
  outs = []
  for start in range(0, n, chunk):
    rows = [x[start:start + chunk] for x in inputs]
    rows = [np.asarray(r) for r in (prepare(*rows) if prepare else rows)]
    real = len(rows[0])
    if real < chunk:
      rows = [np.concatenate([r, np.repeat(r[-1:], chunk - real, 0)])
              for r in rows]
    out = fn(params, tuple(_to_devices(r, mesh) for r in rows))
    outs.append(np.asarray(out, np.float32)[:real])
  return np.concatenate(outs)
