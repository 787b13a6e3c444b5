"""Qwen2's decoder as a frozen text encoder (HART's text model), in Flax.

HART conditions on the final-norm last hidden state of a Qwen2 language
model (`AutoModel` on the released text folder, hart_spec.md 2.2). This is
that network: token embedding, pre-norm decoder layers (RMSNorm, grouped-
query attention with q/k/v biases and no output bias, rotate-half RoPE at
the config's rope_theta, SwiGLU MLP), a final RMSNorm. Attention is causal
and also masks padded keys; positions default to 0..n-1 over the whole
input, padding included, as `transformers.Qwen2Model` numbers them.

`dtype` is the compute dtype (float32 or bfloat16); params are used in
whatever dtype they were loaded, and the RMSNorm statistics, RoPE tables
and softmax stay in float32. Parameter names follow the torch keys
(`layers.3.self_attn.q_proj.weight` -> layers_3/self_attn/q_proj/kernel)
and carry logical axis names from hart_jax.sharding's one rule table, so
the 1.5B encoder shards like the rest of the model.

`load_qwen2(folder)` reads a local Hugging Face folder: config.json of a
plain Qwen2 (`model_type` qwen2) or a Qwen2-VL (text fields at the top
level or under `text_config`), and `model.safetensors` or a sharded
`model.safetensors.index.json` with the key layout of `Qwen2Model`,
`Qwen2ForCausalLM` or Qwen2-VL (vision tower and LM head ignored).
"""

import dataclasses
import json
import logging
import pathlib
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from hart_jax.errors import CheckpointError
from hart_jax.interop.state_dict_io import read_safetensors

_MODEL_TYPES = ("qwen2", "qwen2_vl")
# Rope variants that reduce to plain RoPE for text: Qwen2-VL's "mrope"
# rotates all three (temporal, height, width) sections by the same text
# position when there are no images.
_PLAIN_ROPE = (None, "default", "mrope")
_REQUIRED = object()


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
  """The text decoder's shape; fields named as in config.json."""
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_hidden_layers: int
  num_attention_heads: int
  num_key_value_heads: int
  head_dim: int
  rms_norm_eps: float
  rope_theta: float

  @classmethod
  def from_json(cls, path) -> "Qwen2Config":
    """Reads a Qwen2 or Qwen2-VL config.json; names any bad field."""
    raw = _read_json(path)
    fields = _Fields(path, raw)
    # The top level's type: a Qwen2-VL text_config says "qwen2_vl_text".
    model_type = raw.get("model_type")
    if model_type not in _MODEL_TYPES:
      raise CheckpointError(f"{path}: model_type {model_type!r} is not one "
                            f"of {list(_MODEL_TYPES)}")
    if fields.get("hidden_act", str, "silu") != "silu":
      raise CheckpointError(f"{path}: hidden_act must be 'silu'")
    if fields.get("use_sliding_window", bool, False) or any(
        t != "full_attention" for t in fields.get("layer_types", list, [])):
      raise CheckpointError(f"{path}: sliding-window attention "
                            "(use_sliding_window / layer_types) is not "
                            "supported")
    ints = {name: fields.get(name, int) for name in (
        "vocab_size", "hidden_size", "intermediate_size",
        "num_hidden_layers", "num_attention_heads")}
    heads = ints["num_attention_heads"]
    kv_heads = fields.get("num_key_value_heads", int, heads)
    if heads % kv_heads:
      raise CheckpointError(f"{path}: num_attention_heads {heads} is not a "
                            f"multiple of num_key_value_heads {kv_heads}")
    if ints["hidden_size"] % heads and fields.get("head_dim", int,
                                                  None) is None:
      raise CheckpointError(f"{path}: hidden_size {ints['hidden_size']} is "
                            f"not a multiple of num_attention_heads {heads}")
    head_dim = fields.get("head_dim", int, ints["hidden_size"] // heads)
    _check_rope(fields)
    return cls(**ints, num_key_value_heads=kv_heads, head_dim=head_dim,
               rms_norm_eps=fields.get("rms_norm_eps", float),
               rope_theta=fields.get("rope_theta", float))


class _Fields:
  """Typed config.json look-ups in `text_config` (Qwen2-VL), then the top
  level, each followed by its `rope_parameters` (transformers 5 keeps
  rope_theta there); a missing or wrongly typed field is named."""

  def __init__(self, path, raw: dict):
    self.path = path
    self.sections = []
    for prefix, section in (("text_config.", raw.get("text_config")),
                            ("", raw)):
      if isinstance(section, dict):
        self.sections.append((prefix, section))
        if isinstance(section.get("rope_parameters"), dict):
          self.sections.append((f"{prefix}rope_parameters.",
                                section["rope_parameters"]))

  def get(self, name: str, kind: type, default: Any = _REQUIRED):
    for prefix, section in self.sections:
      if section.get(name) is None:
        continue
      value = section[name]
      if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
      elif kind is int:
        ok = (isinstance(value, int) and not isinstance(value, bool)
              and value > 0)
      else:
        ok = isinstance(value, kind)
      if not ok:
        wanted = "a positive integer" if kind is int else kind.__name__
        raise CheckpointError(f"{self.path}: field {prefix}{name} is "
                              f"{value!r}, expected {wanted}")
      return kind(value)
    if default is _REQUIRED:
      raise CheckpointError(f"{self.path}: missing field {name}")
    return default


def _check_rope(fields: _Fields):
  """Only RoPE variants that act as plain RoPE on text."""
  for name in ("rope_parameters", "rope_scaling"):
    section = fields.get(name, dict, {})
    kind = section.get("rope_type", section.get("type"))
    if kind not in _PLAIN_ROPE:
      raise CheckpointError(f"{fields.path}: {name} type {kind!r} is not "
                            f"supported (only {list(_PLAIN_ROPE[1:])})")


def _read_json(path) -> dict:
  try:
    raw = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
  except FileNotFoundError as e:
    raise CheckpointError(f"{path}: no such file") from e
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path}: not valid JSON ({e})") from e
  if not isinstance(raw, dict):
    raise CheckpointError(f"{path}: expected a JSON object")
  return raw


def _dense(features: int, axes: tuple[str, str], name: str, dtype: Any,
           use_bias: bool) -> nn.Dense:
  return nn.Dense(
      features, use_bias=use_bias, dtype=dtype, name=name,
      kernel_init=nn.with_logical_partitioning(
          nn.initializers.normal(0.02), axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                             (axes[1],)))


class RMSNorm(nn.Module):
  """Qwen2's RMSNorm: float32 statistics, the weight applied after the
  cast back to the input dtype (transformers' order)."""
  eps: float

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    w = self.param("scale", nn.with_logical_partitioning(
        nn.initializers.ones, ("norm",)), (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True)
                                 + self.eps)
    return normed.astype(x.dtype) * w.astype(x.dtype)


def rope_tables(positions: jax.Array, head_dim: int, theta: float):
  """(cos, sin) float32 [B, L, head_dim] for rotate-half RoPE."""
  exponents = np.arange(0, head_dim, 2).astype(np.float32) / np.float32(
      head_dim)
  # A correctly rounded float32 power, then a float32 reciprocal, as the
  # project's other RoPE tables do to match torch's bits.
  powers = np.power(np.float64(theta), exponents.astype(np.float64))
  inv_freq = np.float32(1.0) / powers.astype(np.float32)
  angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
  angles = jnp.concatenate([angles, angles], -1)
  return jnp.cos(angles), jnp.sin(angles)


def _rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], -1)
  return x * cos.astype(x.dtype) + rotated * sin.astype(x.dtype)


class Attention(nn.Module):
  """Grouped-query self-attention: kv head j serves query heads
  j*G..j*G+G-1 (G = heads / kv heads), as torch's repeat_kv lays them."""
  config: Qwen2Config
  dtype: Any

  @nn.compact
  def __call__(self, x, cos, sin, allowed):
    c = self.config
    b, length, _ = x.shape
    kv, hd = c.num_key_value_heads, c.head_dim
    groups = c.num_attention_heads // kv
    q = _dense(c.num_attention_heads * hd, ("embed", "qkv"), "q_proj",
               self.dtype, True)(x).reshape(b, length, kv, groups, hd)
    k = _dense(kv * hd, ("embed", "qkv"), "k_proj", self.dtype, True)(
        x).reshape(b, length, kv, hd)
    v = _dense(kv * hd, ("embed", "qkv"), "v_proj", self.dtype, True)(
        x).reshape(b, length, kv, hd)
    q = _rotate(q, cos[:, :, None, None], sin[:, :, None, None])
    k = _rotate(k, cos[:, :, None], sin[:, :, None])
    scores = jnp.einsum("bqkgd,bskd->bkgqs", q, k,
                        preferred_element_type=jnp.float32) * hd ** -0.5
    # A row with no visible key (an all-padding input) becomes uniform
    # rather than NaN; its output is padding that nothing reads.
    scores = jnp.where(allowed[:, None, None], scores,
                       jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgqs,bskd->bqkgd", probs, v).reshape(b, length, -1)
    return _dense(c.hidden_size, ("qkv", "embed"), "o_proj", self.dtype,
                  False)(out)


class Mlp(nn.Module):
  """SwiGLU: down(silu(gate(x)) * up(x)), no biases."""
  config: Qwen2Config
  dtype: Any

  @nn.compact
  def __call__(self, x):
    c = self.config
    gate = _dense(c.intermediate_size, ("embed", "mlp"), "gate_proj",
                  self.dtype, False)(x)
    up = _dense(c.intermediate_size, ("embed", "mlp"), "up_proj",
                self.dtype, False)(x)
    return _dense(c.hidden_size, ("mlp", "embed"), "down_proj", self.dtype,
                  False)(nn.silu(gate) * up)


class DecoderLayer(nn.Module):
  config: Qwen2Config
  dtype: Any

  @nn.compact
  def __call__(self, x, cos, sin, allowed):
    eps = self.config.rms_norm_eps
    h = RMSNorm(eps, name="input_layernorm")(x)
    x = x + Attention(self.config, self.dtype, name="self_attn")(
        h, cos, sin, allowed)
    h = RMSNorm(eps, name="post_attention_layernorm")(x)
    return x + Mlp(self.config, self.dtype, name="mlp")(h)


class Qwen2Model(nn.Module):
  """ids [B, L], mask [B, L] -> final-norm hidden states [B, L, hidden].

  `positions` [B, L] defaults to 0..L-1 for every row, whatever the mask
  (transformers' default); the mask only hides padded keys.
  """
  config: Qwen2Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array,
               positions: jax.Array | None = None) -> jax.Array:
    c = self.config
    x = nn.Embed(c.vocab_size, c.hidden_size, dtype=self.dtype,
                 embedding_init=nn.with_logical_partitioning(
                     nn.initializers.normal(0.02), ("vocab", "embed")),
                 name="embed_tokens")(ids)
    length = ids.shape[1]
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(length), ids.shape)
    cos, sin = rope_tables(positions, c.head_dim, c.rope_theta)
    causal = jnp.tril(jnp.ones((length, length), bool))
    allowed = causal[None] & mask.astype(bool)[:, None, :]
    for i in range(c.num_hidden_layers):
      x = DecoderLayer(c, self.dtype, name=f"layers_{i}")(x, cos, sin,
                                                           allowed)
    return RMSNorm(c.rms_norm_eps, name="norm")(x)


def abstract_params(config: Qwen2Config):
  """Logically partitioned ShapeDtypeStructs of the params (no compute),
  for `hart_jax.sharding.param_shardings`."""
  ids = jnp.zeros((1, 2), jnp.int32)
  return jax.eval_shape(lambda: Qwen2Model(config).init(
      jax.random.key(0), ids, ids == 0)["params"])


def _torch_key(path: tuple[str, ...]) -> str:
  """Flax param path -> the Qwen2Model state-dict key."""
  *modules, leaf = path
  parts = [re.sub(r"^layers_(\d+)$", r"layers.\1", m) for m in modules]
  return ".".join(parts + ["bias" if leaf == "bias" else "weight"])


def state_from_params(params) -> dict[str, np.ndarray]:
  """params -> a plain Qwen2Model state dict (torch layouts), e.g. to write
  a small encoder folder; the inverse of `params_from_state`."""
  out = {}
  for path, value in traverse_util.flatten_dict(nn.unbox(params)).items():
    value = np.asarray(value)
    out[_torch_key(path)] = value.T if path[-1] == "kernel" else value
  return out


# Keys of a Qwen2-VL vision tower or an LM head: not part of the encoder.
_IGNORED = re.compile(r"^(model\.)?visual\.|^lm_head\.")
# Where the decoder sits: Qwen2-VL in recent transformers, Qwen2ForCausalLM
# and older Qwen2-VL, a bare Qwen2Model.
_PREFIXES = ("model.language_model.", "model.", "")


def _decoder_weights(state: dict) -> dict:
  kept = {k: v for k, v in state.items() if not _IGNORED.match(k)}
  prefix = next((p for p in _PREFIXES if f"{p}embed_tokens.weight" in kept
                 or any(k.startswith(f"{p}layers.") for k in kept)), "")
  return {k[len(prefix):]: v for k, v in kept.items()
          if k.startswith(prefix)}


def params_from_state(config: Qwen2Config, state: dict, where: str = "",
                      dtype: Any = None) -> dict:
  """torch state dict -> params (numpy, on the host); every missing or
  mis-shaped key is named in one CheckpointError.

  Args:
    config: the decoder's shape.
    state: key -> array, in any of the layouts load_qwen2 accepts.
    where: the folder or file, for error messages.
    dtype: cast every param to this dtype; None keeps the stored dtype.

  Returns:
    The params tree of `Qwen2Model`.
  """
  state = _decoder_weights(state)
  expected = traverse_util.flatten_dict(nn.unbox(abstract_params(config)))
  params, problems, used = {}, [], set()
  for path, spec in expected.items():
    key = _torch_key(path)
    used.add(key)
    want = spec.shape[::-1] if path[-1] == "kernel" else spec.shape
    if key not in state:
      problems.append(f"missing {key} {list(want)}")
      continue
    value = np.asarray(state[key])
    if value.shape != want:
      problems.append(f"{key} is {list(value.shape)} in the checkpoint, "
                      f"{list(want)} expected")
      continue
    if path[-1] == "kernel":  # torch Linear [out, in] -> Flax [in, out]
      value = value.T
    params[path] = np.ascontiguousarray(
        value if dtype is None else value.astype(dtype))
  if problems:
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    raise CheckpointError(f"{where or 'Qwen2 weights'}: the weights do not "
                          f"fit config.json: {'; '.join(problems[:5])}"
                          f"{more}")
  # Old checkpoints carry rotary inv_freq buffers; anything else unused is
  # worth a look but does not stop the load.
  extra = sorted(k for k in state if k not in used
                 and not k.endswith("rotary_emb.inv_freq"))
  if extra:
    logging.warning("%s: ignoring %d unexpected Qwen2 keys, e.g. %s",
                    where, len(extra), extra[:5])
  return traverse_util.unflatten_dict(params)


def read_weights(folder) -> dict[str, np.ndarray]:
  """All tensors of `model.safetensors` or of the shards that
  `model.safetensors.index.json` lists (safetensors only: no pickles)."""
  folder = pathlib.Path(folder)
  single = folder / "model.safetensors"
  if single.exists():
    return read_safetensors(str(single))
  index = folder / "model.safetensors.index.json"
  if not index.exists():
    raise CheckpointError(f"{folder}: no model.safetensors or model."
                          "safetensors.index.json (only safetensors weights "
                          "are read)")
  weight_map = _read_json(index).get("weight_map")
  if not isinstance(weight_map, dict) or not all(
      isinstance(v, str) for v in weight_map.values()):
    raise CheckpointError(f"{index}: weight_map must map tensor names to "
                          "shard file names")
  state = {}
  for shard in sorted(set(weight_map.values())):
    # Shards sit beside the index; a path could read outside the folder.
    if pathlib.PurePath(shard).name != shard or shard in (".", ".."):
      raise CheckpointError(f"{index}: shard {shard!r} is not a file name")
    if not (folder / shard).exists():
      raise CheckpointError(f"{index}: shard {shard} is missing")
    tensors = read_safetensors(str(folder / shard))
    listed = [k for k, v in weight_map.items() if v == shard]
    absent = [k for k in listed if k not in tensors]
    if absent:
      raise CheckpointError(f"{folder / shard}: lacks {len(absent)} "
                            f"tensor(s) the index lists, e.g. {absent[:3]}")
    state.update({k: tensors[k] for k in listed})
  return state


def load_qwen2(folder, dtype: Any = None) -> tuple[Qwen2Config, dict]:
  """(config, params) of a local Hugging Face Qwen2 / Qwen2-VL folder.

  Args:
    folder: holds config.json and model.safetensors (or a sharded
      model.safetensors.index.json).
    dtype: cast the params to this dtype; None keeps the stored dtype.

  Returns:
    The decoder's config and its params as numpy arrays on the host.
  """
  folder = pathlib.Path(folder)
  config = Qwen2Config.from_json(folder / "config.json")
  return config, params_from_state(config, read_weights(folder), str(folder),
                                   dtype)
