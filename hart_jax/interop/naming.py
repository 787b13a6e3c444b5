"""Flax parameter paths <-> official torch state-dict keys, and layouts.

Module names in hart_jax follow the official attribute names, with
underscores where torch uses a dot into a ModuleList (`down_0_block_1` is
`down.0.block.1`). The few renames that are not mechanical are listed here,
in one place, for both directions.
"""

import re

import numpy as np

# (pattern on one flax module name, torch replacement). First match wins.
_SEGMENT_RULES = (
    (re.compile(r"^(down|up)_(\d+)_(block|attn)_(\d+)$"), r"\1.\2.\3.\4"),
    (re.compile(r"^(down|up)_(\d+)_(downsample|upsample)$"), r"\1.\2.\3.conv"),
    (re.compile(r"^mid_(block_1|block_2|attn_1)$"), r"mid.\1"),
    (re.compile(r"^main_(\d+)$"), r"main.\1"),
    (re.compile(r"^res_blocks_(\d+)$"), r"res_blocks.\1"),
    (re.compile(r"^blocks_(\d+)$"), r"blocks.\1"),
    # nn.Sequential children in the transformer and the diffusion head.
    (re.compile(r"^(mlp|adaLN_modulation|ada_lin)_(\d+)$"), r"\1.\2"),
)

# Leaf renames: flax -> torch.
_LEAF_RULES = {
    "kernel": "weight", "scale": "weight", "bias": "bias",
    "mean": "running_mean", "var": "running_var",
    "num_batches_tracked": "num_batches_tracked",
    "embedding": "embedding.weight",
}


def torch_segment(name: str) -> str:
  for pattern, repl in _SEGMENT_RULES:
    if pattern.match(name):
      return pattern.sub(repl, name)
  return name


def torch_key(path: tuple[str, ...], leaf_renames=None) -> str:
  """Torch key of a flax path (module names..., leaf name)."""
  *modules, leaf = path
  leaf = (leaf_renames or {}).get(leaf, _LEAF_RULES.get(leaf, leaf))
  return ".".join([torch_segment(m) for m in modules] + [leaf])


def to_torch_layout(value: np.ndarray, leaf: str) -> np.ndarray:
  """Flax array -> torch layout (Dense [in,out] -> [out,in]; conv HWIO->OIHW)."""
  if leaf == "kernel" and value.ndim == 4:
    return np.transpose(value, (3, 2, 0, 1))
  if leaf == "kernel" and value.ndim == 2:
    return value.T
  return value


def from_torch_layout(value: np.ndarray, leaf: str) -> np.ndarray:
  if leaf == "kernel" and value.ndim == 4:
    return np.transpose(value, (2, 3, 1, 0))
  if leaf == "kernel" and value.ndim == 2:
    return value.T
  return value


def torch_shape(flax_shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
  if leaf == "kernel" and len(flax_shape) == 4:
    return (flax_shape[3], flax_shape[2], flax_shape[0], flax_shape[1])
  if leaf == "kernel" and len(flax_shape) == 2:
    return (flax_shape[1], flax_shape[0])
  return tuple(flax_shape)
