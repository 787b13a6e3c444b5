"""Fine-tuning part of a HART transformer: frozen parts and LoRA adapters.

The `finetune` section of a HART-stage config (absent or empty: every
parameter trains, as before):
  train_only    "+"-separated parts that train while the rest is frozen:
                diffusion_head (`diffloss`), head (`head`, `head_nm`),
                norms (every RMSNorm/LayerNorm weight), last_blocks:N.
  lora_rank     r > 0 adds low-rank adapters to `lora_targets` in every
                block; with an empty train_only they are all that trains.
  lora_alpha    the adapters' scale is alpha / r (0: alpha = r, scale 1).
  lora_targets  "+"-separated: q, k, v (column blocks of the fused qkv
                kernel), out (attention `proj`), gate, up, down (llama
                MLP), fc1, fc2 (gpt2 MLP).

A partial run (frozen parts or LoRA) keeps frozen weights out of
everything a step differentiates, updates or averages:
  state.params      {"params": trainable parts, "lora": adapters} (the
                    keys that have leaves)
  state.ema_params  the EMA of that tree only
  state.opt_state   AdamW moments of that tree only
  state.extra       {"frozen": the frozen parts}
`Partition.merge` rebuilds the model's params from the two (LoRA folded
into the kernels); the loss, the sample grids, export and every reader of
the checkpoint (hart_jax.checkpointing.read_state_items) go through it,
so a partial run looks like a plain one from outside. With scanned blocks
(`scan_layers`) `last_blocks:N` trains the last N rows of each stacked
leaf: the trainable and frozen rows are separate arrays, concatenated
inside the loss.

LoRA is functional: the model modules are unchanged; the forward pass
sees `kernel + (alpha/r) * a @ b` on each target, with a [in, r] and
b [r, out] in flax's kernel layout (torch: weight + scale * B @ A with
B = b^T, A = a^T). b starts at zero, so a fresh adapter changes nothing.
"""

import dataclasses
import re
from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from hart_jax.errors import ConfigError
from hart_jax.models.hart import layer_stack
from hart_jax.models.hart.config import HartConfig

PARTS = ("diffusion_head", "head", "norms", "last_blocks:N")
LORA_TARGETS = ("q", "k", "v", "out", "gate", "up", "down", "fc1", "fc2")
# target -> (module path inside a block, index of its column block in a
# fused qkv kernel, or None for the whole kernel).
_TARGET_KERNELS = {
    "q": (("attn", "{qkv}"), 0), "k": (("attn", "{qkv}"), 1),
    "v": (("attn", "{qkv}"), 2), "out": (("attn", "proj"), None),
    "gate": (("ffn", "gate_proj"), None), "up": (("ffn", "up_proj"), None),
    "down": (("ffn", "down_proj"), None), "fc1": (("ffn", "fc1"), None),
    "fc2": (("ffn", "fc2"), None)}
_NORM_MODULES = ("ln_wo_grad", "context_norm", "decoder_norm")
_BLOCK = re.compile(r"^blocks_(\d+)$")


@dataclasses.dataclass(frozen=True)
class FinetuneSpec:
  """What trains; the default (nothing set) is full training."""
  parts: tuple[str, ...] = ()
  last_blocks: int = 0
  lora_rank: int = 0
  lora_alpha: float = 0.0
  lora_targets: tuple[str, ...] = ()

  @property
  def partial(self) -> bool:
    return bool(self.parts or self.last_blocks or self.lora_rank)

  @property
  def lora_scale(self) -> float:
    return (self.lora_alpha or self.lora_rank) / self.lora_rank

  def describe(self) -> str:
    if not self.partial:
      return "full"
    bits = list(self.parts)
    if self.last_blocks:
      bits.append(f"last {self.last_blocks} blocks")
    if self.lora_rank:
      bits.append(f"LoRA r={self.lora_rank} on {'+'.join(self.lora_targets)}")
    return ", ".join(bits)


def _split_names(value) -> list[str]:
  return [s.strip() for s in str(value or "").split("+") if s.strip()]


def spec_from_config(config) -> FinetuneSpec:
  """The FinetuneSpec of a training config (ConfigError names the field)."""
  section = config.get("finetune") if hasattr(config, "get") else None
  if not section:
    return FinetuneSpec()
  parts, last = [], 0
  for name in _split_names(section.get("train_only", "")):
    if name.startswith("last_blocks:"):
      count = name.partition(":")[2]
      if not count.isdigit() or int(count) < 1:
        raise ConfigError(f"finetune.train_only: {name!r} needs a block "
                          "count >= 1, e.g. last_blocks:4")
      last = int(count)
    elif name in PARTS:
      parts.append(name)
    else:
      raise ConfigError(f"finetune.train_only: unknown part {name!r}; "
                        f"allowed: {', '.join(PARTS)} (joined with +)")
  rank = int(section.get("lora_rank", 0) or 0)
  if rank < 0:
    raise ConfigError(f"finetune.lora_rank must be >= 0, got {rank}")
  targets = _split_names(section.get("lora_targets", ""))
  for name in targets:
    if name not in LORA_TARGETS:
      raise ConfigError(f"finetune.lora_targets: unknown target {name!r}; "
                        f"allowed: {', '.join(LORA_TARGETS)} (joined with +)")
  if rank and not targets:
    raise ConfigError("finetune.lora_rank > 0 needs finetune.lora_targets "
                      f"(some of {', '.join(LORA_TARGETS)})")
  alpha = float(section.get("lora_alpha", 0.0) or 0.0)
  if alpha < 0:
    raise ConfigError(f"finetune.lora_alpha must be >= 0, got {alpha}")
  spec = FinetuneSpec(tuple(dict.fromkeys(parts)), last, rank, alpha,
                      tuple(dict.fromkeys(targets)) if rank else ())
  if spec.partial and config.get("stage") != "hart":
    raise ConfigError("finetune (train_only / lora_rank) applies to the "
                      f"HART stage, not the {config.get('stage')} stage")
  return spec


def _value(leaf):
  return leaf.value if isinstance(leaf, nn.Partitioned) else leaf


def _rebox(leaf, value, names=None):
  """`value` in `leaf`'s logical box (if it has one), or in a new box."""
  if isinstance(leaf, nn.Partitioned):
    return leaf.replace(value=value, names=names or leaf.names)
  return nn.Partitioned(value, names) if names else value


def _flat(tree) -> dict[tuple[str, ...], Any]:
  return flax.traverse_util.flatten_dict(dict(tree)) if tree else {}


def _nest(flat: dict) -> dict:
  return flax.traverse_util.unflatten_dict(flat) if flat else {}


class Partition:
  """Which parameters of one model train, and the LoRA adapters' places."""

  def __init__(self, spec: FinetuneSpec, config: HartConfig):
    self.spec, self.config = spec, config
    if spec.last_blocks > config.depth:
      raise ConfigError(f"finetune.train_only: last_blocks:"
                        f"{spec.last_blocks} exceeds the model's depth "
                        f"{config.depth}")
    qkv = "qkv_proj" if config.attn_type == "llama" else "mat_qkv"
    mlp = (("gate", "up", "down") if config.mlp_type == "llama"
           else ("fc1", "fc2"))
    self.slots = {}   # target -> (module path in a block, column block)
    for target in spec.lora_targets:
      if target in ("gate", "up", "down", "fc1", "fc2") and target not in mlp:
        raise ConfigError(
            f"finetune.lora_targets: {target!r} is not in this model's "
            f"{config.mlp_type} MLP (its projections: {', '.join(mlp)})")
      module, block = _TARGET_KERNELS[target]
      self.slots[target] = (tuple(m.format(qkv=qkv) for m in module), block)

  # --- which leaves train --------------------------------------------------

  def trainable_rows(self, path: tuple[str, ...]) -> Optional[int]:
    """None: frozen; 0: the whole leaf trains; r > 0: rows r: of a leaf
    stacked over blocks (scanned layout) train."""
    s, top = self.spec, path[0]
    if (("diffusion_head" in s.parts and top == "diffloss")
        or ("head" in s.parts and top in ("head", "head_nm"))
        or ("norms" in s.parts and any(m in _NORM_MODULES
                                       for m in path[:-1]))):
      return 0
    if s.last_blocks:
      first = self.config.depth - s.last_blocks
      match = _BLOCK.match(top)
      if match and int(match.group(1)) >= first:
        return 0
      if top == layer_stack.SCANNED:
        return first
    return None

  def _lora_places(self, flat):
    """(kernel path, target, column block) of every adapter."""
    for path in flat:
      if path[-1] != "kernel" or not (_BLOCK.match(path[0])
                                      or path[0] == layer_stack.SCANNED):
        continue
      for target, (module, block) in self.slots.items():
        if path[1:-1] == module:
          yield path, target, block

  # --- split / merge -------------------------------------------------------

  def split(self, params, rng: Optional[jax.Array] = None):
    """Model params (boxed or not) -> (trained tree, frozen tree).

    With lora_rank > 0 and an `rng`, the trained tree also holds freshly
    initialised adapters (without `rng`: none, for a caller that keeps
    its own).
    """
    flat = _flat(params)
    train, frozen = {}, {}
    for path, leaf in flat.items():
      rows = self.trainable_rows(path)
      if rows is None:
        frozen[path] = leaf
      elif rows == 0:
        train[path] = leaf
      else:
        train[path] = _rebox(leaf, _value(leaf)[rows:])
        frozen[path] = _rebox(leaf, _value(leaf)[:rows])
    if not frozen:
      raise ConfigError("finetune: every parameter trains with these parts; "
                        "leave finetune.train_only empty for full training")
    trained = {"params": _nest(train)} if train else {}
    if self.spec.lora_rank and rng is not None:
      trained["lora"] = self.init_adapters(flat, rng)
    return trained, _nest(frozen)

  def init_adapters(self, flat, rng: jax.Array):
    """a ~ U(+-1/sqrt(in)) (PEFT's default), b = 0, for every target."""
    out, r = {}, self.spec.lora_rank
    for i, (path, target, block) in enumerate(self._lora_places(flat)):
      kernel = flat[path]
      shape = _value(kernel).shape
      lead, fan_in = shape[:-2], shape[-2]
      width = shape[-1] // 3 if block is not None else shape[-1]
      names = getattr(kernel, "names", None)
      bound = fan_in ** -0.5
      a = jax.random.uniform(jax.random.fold_in(rng, i), lead + (fan_in, r),
                             jnp.float32, -bound, bound)
      b = jnp.zeros(lead + (r, width), jnp.float32)
      a_names = b_names = None
      if names is not None:
        a_names = tuple(names[:-1]) + (None,)
        b_names = tuple(names[:-2]) + (None, names[-1])
      place = path[:-1] + (target,)
      out[place + ("a",)] = _rebox(kernel, a, a_names) if names else a
      out[place + ("b",)] = _rebox(kernel, b, b_names) if names else b
    if not out:
      raise ConfigError("finetune.lora_targets: no kernel of this model "
                        f"matches {', '.join(self.spec.lora_targets)}")
    return _nest(out)

  def merge(self, trained, frozen):
    """(trained tree, frozen tree) -> the model's params, adapters folded
    into their kernels. Pure jnp: runs inside the jitted loss or on host."""
    flat = dict(_flat(frozen))
    for path, value in _flat(trained.get("params")).items():
      flat[path] = (jnp.concatenate([flat[path], value], 0) if path in flat
                    else value)
    adapters = _flat(trained.get("lora"))
    scale = self.spec.lora_scale if adapters else 0.0
    for place in sorted({p[:-1] for p in adapters}):
      kernel_path = place[:-1] + ("kernel",)
      target = place[-1]
      delta = scale * jnp.matmul(adapters[place + ("a",)],
                                 adapters[place + ("b",)])
      kernel = jnp.asarray(flat[kernel_path])
      block = self.slots[target][1]
      if block is None:
        flat[kernel_path] = kernel + delta.astype(kernel.dtype)
      else:
        width = kernel.shape[-1] // 3
        cols = slice(block * width, (block + 1) * width)
        flat[kernel_path] = kernel.at[..., cols].add(
            delta.astype(kernel.dtype))
    return _nest(flat)


def partition_for(config, model_config: HartConfig) -> Optional[Partition]:
  """The run's Partition, or None for full training."""
  spec = spec_from_config(config)
  return Partition(spec, model_config) if spec.partial else None


def tree_bytes(tree) -> tuple[int, int]:
  """(leaf count, bytes) of the arrays in a tree (optimizer-state size)."""
  leaves = [x for x in jax.tree.leaves(tree) if hasattr(x, "dtype")]
  return len(leaves), sum(int(x.size) * x.dtype.itemsize for x in leaves)
