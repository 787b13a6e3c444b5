"""Official `diffloss.*` state-dict keys <-> DiffusionHead params.

The official transformer holds its diffusion head as `self.diffloss`, a
`DiffLoss` whose only parameters live in `net` (SimpleMLPAdaLN), so every
key is `diffloss.net.<module path>.<weight|bias>`. The expected keys and
shapes come from `jax.eval_shape` of the module's init: no parameter is
materialised to build them, and a changed module cannot drift from the
importer.
"""

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from hart_jax.interop import naming
from hart_jax.interop.state_dict_io import CheckpointError
from hart_jax.models.diffusion_head import DiffusionHead, DiffusionHeadConfig


@functools.lru_cache(maxsize=None)
def abstract_params(config: DiffusionHeadConfig) -> dict[str, Any]:
  """ShapeDtypeStructs of DiffusionHead(config)'s params ({"net": ...})."""
  head = DiffusionHead(config)
  x = jnp.zeros((1, config.in_channels), jnp.float32)
  t = jnp.zeros((1,), jnp.int32)
  z = jnp.zeros((1, config.cond_dim), jnp.float32)
  variables = jax.eval_shape(head.init, jax.random.key(0), x, t, z)
  return flax.core.unfreeze(flax.core.meta.unbox(variables["params"]))


def _flat(params) -> dict[tuple[str, ...], Any]:
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(params))


def _listing(keys: list[str]) -> str:
  more = f" and {len(keys) - 10} more" if len(keys) > 10 else ""
  return f"{keys[:10]}{more}"


def import_diffusion_params(state: dict[str, np.ndarray],
                            config: DiffusionHeadConfig,
                            prefix: str = "diffloss.") -> dict[str, Any]:
  """Official tensors -> DiffusionHead params (float32 unless configured).

  Args:
    state: a state dict; keys outside `prefix` (the transformer's) are
      ignored, keys under it must match the head exactly.
    config: the head's sizes (width, depth, cond_dim, in_channels).
    prefix: where the head sits in `state`.

  Returns:
    The param tree, {"net": {...}}, to use as {"params": tree}.

  Raises:
    CheckpointError (a ValueError) naming missing, mis-shaped and
    unexpected keys under `prefix`.
  """
  ours = {k: v for k, v in state.items() if k.startswith(prefix)}
  params, missing, bad = {}, [], []
  for path, spec in _flat(abstract_params(config)).items():
    key = prefix + naming.torch_key(path)
    if key not in ours:
      missing.append(key)
      continue
    value = np.asarray(ours.pop(key))
    want = naming.torch_shape(spec.shape, path[-1])
    if tuple(value.shape) != want:
      bad.append(f"{key}: checkpoint {list(value.shape)}, expected "
                 f"{list(want)}")
      continue
    params[path] = jnp.asarray(
        naming.from_torch_layout(value, path[-1]).astype(spec.dtype))
  problems = []
  if missing:
    problems.append(f"missing key(s): {_listing(missing)}")
  if bad:
    problems.append("mis-shaped key(s): " + "; ".join(bad[:10]))
  if ours:
    problems.append(f"unexpected key(s): {_listing(sorted(ours))}")
  if problems:
    raise CheckpointError(
        f"diffusion head checkpoint does not match width={config.width}, "
        f"depth={config.depth}, cond_dim={config.cond_dim}: "
        + " | ".join(problems))
  return flax.traverse_util.unflatten_dict(params)


def export_diffusion_params(params,
                            prefix: str = "diffloss.") -> dict[str, np.ndarray]:
  """DiffusionHead params ({"net": ...}) -> official tensors (float32)."""
  out = {}
  for path, value in _flat(params).items():
    value = np.asarray(jax.device_get(value)).astype(np.float32)
    out[prefix + naming.torch_key(path)] = naming.to_torch_layout(
        value, path[-1])
  return out
