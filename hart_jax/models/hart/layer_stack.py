"""Two layouts of the transformer blocks' parameters, and conversion.

Unrolled (`scan_layers=False`, the official layout): one subtree per block,
`blocks_0` ... `blocks_{depth-1}`. Scanned (`scan_layers=True`): one subtree
`blocks` whose leaves carry a leading `depth` axis, which `nn.scan` walks
through (one compiled block instead of `depth`). Interop and `init_from`
convert between the two, so the layout is a training choice, never a
property of a checkpoint.
"""

import re
from typing import Any, Mapping

from flax.core import meta
import numpy as np

SCANNED = "blocks"
# Logical name of the stacked axis (sharding rule: replicated).
LAYER_AXIS = "layers"
_UNROLLED = re.compile(r"^blocks_(\d+)$")


def is_scanned(params: Mapping[str, Any]) -> bool:
  return SCANNED in params


def _unrolled_names(params: Mapping[str, Any]) -> list[str]:
  names = sorted((k for k in params if _UNROLLED.match(k)),
                 key=lambda k: int(_UNROLLED.match(k).group(1)))
  if [int(_UNROLLED.match(k).group(1)) for k in names] != list(
      range(len(names))):
    raise ValueError(f"blocks are not numbered 0..n-1: {names}")
  return names


def _tree_map(fn, *trees):
  """Map over nested dicts only (boxed leaves stay whole)."""
  if isinstance(trees[0], Mapping):
    return {k: _tree_map(fn, *(t[k] for t in trees)) for k in trees[0]}
  return fn(*trees)


def stack_blocks(params: Mapping[str, Any], stack=np.stack
                 ) -> dict[str, Any]:
  """blocks_0..blocks_{d-1} -> blocks (leaves stacked on a new axis 0).

  `stack=jnp.stack` works under tracing. Logically boxed leaves keep their
  box, with the `layers` axis name prepended (what nn.scan's metadata
  would give them).
  """
  names = _unrolled_names(params)
  if not names:
    raise ValueError("no blocks_{i} subtrees to stack")
  out = {k: v for k, v in params.items() if k not in names}
  out[SCANNED] = _tree_map(lambda *leaves: _stack(stack, leaves),
                           *(params[n] for n in names))
  return out


def _stack(stack, leaves):
  first = leaves[0]
  if isinstance(first, meta.Partitioned):
    return first.replace(value=stack([x.value for x in leaves]),
                         names=(LAYER_AXIS,) + tuple(first.names))
  return stack(list(leaves))


def unstack_blocks(params: Mapping[str, Any]) -> dict[str, Any]:
  """blocks (stacked leaves) -> blocks_0..blocks_{d-1}."""
  stacked = params[SCANNED]
  depth = len(np.asarray(_first_leaf(stacked)))
  out = {k: v for k, v in params.items() if k != SCANNED}
  for i in range(depth):
    out[f"blocks_{i}"] = _tree_map(lambda x, i=i: np.asarray(x)[i], stacked)
  return out


def _first_leaf(tree):
  while isinstance(tree, Mapping):
    tree = next(iter(tree.values()))
  return tree


def to_layout(params: Mapping[str, Any], scanned: bool,
              stack=np.stack) -> dict[str, Any]:
  """`params` (transformer params, either layout) in the requested one."""
  if scanned == is_scanned(params):
    return dict(params)
  return stack_blocks(params, stack) if scanned else unstack_blocks(params)


def match_layout(source: Mapping[str, Any],
                 target: Mapping[str, Any]) -> dict[str, Any]:
  """Converts every transformer subtree of `source` (at any depth) to the
  block layout its counterpart in `target` uses; other subtrees pass."""
  if not isinstance(source, Mapping) or not isinstance(target, Mapping):
    return source
  src_scanned, dst_scanned = is_scanned(source), is_scanned(target)
  src_unrolled = bool(_unrolled_names(source))
  dst_unrolled = any(_UNROLLED.match(k) for k in target)
  if (src_scanned and dst_unrolled) or (src_unrolled and dst_scanned):
    source = to_layout(source, dst_scanned)
  return {k: match_layout(v, target[k]) if k in target else v
          for k, v in source.items()}
