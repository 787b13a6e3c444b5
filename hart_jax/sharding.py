"""Device meshes and the ONE logical-axis -> mesh-axis rule table.

Parameters carry logical axis names (see hart_jax/models); the rules below
say which mesh axis shards each of them. Mesh axes, ordered by how much they
communicate: `data` (pure data parallel), `fsdp` (data parallel with
parameters and optimizer state sharded), `tensor` (model parallel).
"""

import logging
from typing import Any, Mapping, Sequence

import flax
import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from hart_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axes (None: replicated). Params are sharded along
# `fsdp` on their input side and `tensor` on their output side; activations'
# batch axis uses both data axes.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("embed_out", "tensor"),
    ("qkv", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("embed2", "tensor"),
    ("embed6", "tensor"),
    ("cond", "fsdp"),
    ("context", None),
    ("latent", None),
    ("levels", None),
    ("classes", None),
    ("freq", None),
    ("seq", None),
    ("norm", None),
    # The stacked-layer axis of scanned blocks: each device holds every
    # layer (sharding it would serialise the scan across devices).
    ("layers", None),
    # The diffusion MLP (37M at release) is FSDP-sharded on its inputs.
    ("diff_in", "fsdp"),
    ("diff_out", None),
)


def make_mesh(axis_sizes: Mapping[str, int],
              devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """Mesh with axes (data, fsdp, tensor); one size may be -1 (fills up).

  Auto axis types: linen's logical constraints do not work with the
  Explicit default of `jax.make_mesh`.
  """
  devices = list(devices if devices is not None else jax.devices())
  unknown = set(axis_sizes) - set(MESH_AXES)
  if unknown:
    raise ConfigError(f"unknown mesh axes {sorted(unknown)}; use {MESH_AXES}")
  sizes = [int(axis_sizes.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ConfigError(f"at most one mesh axis may be -1, got {axis_sizes}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ConfigError(f"{len(devices)} devices do not divide into mesh "
                        f"{axis_sizes}")
    sizes[sizes.index(-1)] = len(devices) // known
  if -1 not in sizes and int(np.prod(sizes)) < len(devices):
    # An explicit smaller mesh (e.g. one device for a quick run) uses the
    # first devices; say so, since the others then sit idle.
    logging.warning("mesh %s uses %d of %d devices", dict(zip(
        MESH_AXES, sizes)), int(np.prod(sizes)), len(devices))
    devices = devices[:int(np.prod(sizes))]
  if int(np.prod(sizes)) != len(devices):
    raise ConfigError(f"mesh {dict(zip(MESH_AXES, sizes))} needs "
                      f"{int(np.prod(sizes))} devices, have {len(devices)}")
  return jax.make_mesh(tuple(sizes), MESH_AXES, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)


def rules_from_config(rules) -> tuple[tuple[str, Any], ...]:
  return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in rules)


def param_shardings(boxed_abstract, mesh, rules=DEFAULT_RULES):
  """NamedShardings for a tree of logically-partitioned (abstract) params.

  A dimension that its mesh axes do not divide (a 32-wide latent on a
  64-way fsdp axis) is replicated instead, so any mesh works; each such
  fallback is logged.
  """
  specs = nn.get_partition_spec(boxed_abstract)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, list(rules))
  shapes = flax.core.meta.unbox(boxed_abstract)
  return jax.tree.map(lambda s, x: _divisible(s, x.shape, mesh), shardings,
                      shapes)


def _divisible(named: NamedSharding, shape, mesh) -> NamedSharding:
  spec = list(named.spec) + [None] * (len(shape) - len(named.spec))
  changed = False
  for dim, axes in enumerate(spec):
    if axes is None:
      continue
    names = axes if isinstance(axes, tuple) else (axes,)
    ways = int(np.prod([mesh.shape[a] for a in names]))
    if shape[dim] % ways:
      spec[dim], changed = None, True
  if not changed:
    return named
  logging.info("replicating dims of a %s param that %s does not divide",
               tuple(shape), named.spec)
  return NamedSharding(mesh, P(*spec))


def batch_sharding(mesh) -> NamedSharding:
  """Leading (batch) axis over both data-parallel axes."""
  return NamedSharding(mesh, P(("data", "fsdp")))


def data_parallel_size(mesh) -> int:
  """How many ways `batch_sharding` splits the batch (1 without a mesh)."""
  if mesh is None:
    return 1
  return int(np.prod([mesh.shape[a] for a in ("data", "fsdp")]))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_rules_cover(boxed_abstract, rules=DEFAULT_RULES) -> list[str]:
  """Logical names used by params but missing from the rules (should be [])."""
  names = set()
  for box in jax.tree.leaves(boxed_abstract, is_leaf=lambda x: isinstance(
      x, nn.Partitioned)):
    if isinstance(box, nn.Partitioned):
      names.update(n for n in box.names if n is not None)
  return sorted(names - {k for k, _ in rules})
