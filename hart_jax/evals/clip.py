"""CLIP image and text towers (transformers.CLIPModel layout), CLIP score.

Reads a local Hugging Face CLIP folder (config.json with model_type
"clip", model.safetensors, tokenizer.json, optionally
preprocessor_config.json), e.g. openai/clip-vit-base-patch32 or
clip-vit-large-patch14; transformers is not needed at run time.

Both towers are pre-LayerNorm transformers (quick_gelu for OpenAI CLIP).
The vision tower embeds non-overlapping patches plus a class token,
applies `pre_layrnorm` (sic, the torch name), and pools the class token
through `post_layernorm`; the text tower is causal and pools the final
LayerNorm's output at the first end token (at argmax(ids) for configs
whose eos_token_id is the legacy 2, as transformers does). Each pooled
vector goes through its bias-free projection.

The CLIP score is defined as in HART and MJHQ-30K (the torchmetrics
CLIPScore): 100 * max(cos(image_embed, text_embed), 0) per pair, averaged
over the set by the caller. Matmuls run at HIGHEST precision so a TPU's
default bf16 passes do not move the score.

Param names follow the torch keys (`text_model.encoder.layers.3.mlp.fc1.
weight` -> text_model/encoder/layers_3/mlp/fc1/kernel); see
`torch_weights`.
"""

import dataclasses
import functools
import json
import pathlib
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hart_jax.errors import CheckpointError, InputError
from hart_jax.evals import sharded, torch_weights
from hart_jax.evals.clip_inputs import ClipPreprocess, ClipTokenizer
from hart_jax.interop.state_dict_io import read_safetensors

_HIGHEST = jax.lax.Precision.HIGHEST
_ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": functools.partial(nn.gelu, approximate=False),
    "gelu_new": functools.partial(nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(nn.gelu, approximate=True),
}


@dataclasses.dataclass(frozen=True)
class TowerConfig:
  """The transformer of one tower (transformers' field names)."""
  hidden_size: int
  intermediate_size: int
  num_hidden_layers: int
  num_attention_heads: int
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5


# transformers' CLIPTextConfig / CLIPVisionConfig defaults (ViT-B/32),
# used for fields a config.json leaves out.
_TEXT_DEFAULTS = dict(hidden_size=512, intermediate_size=2048,
                      num_hidden_layers=12, num_attention_heads=8,
                      vocab_size=49408, max_position_embeddings=77,
                      eos_token_id=49407)
_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072,
                        num_hidden_layers=12, num_attention_heads=12,
                        image_size=224, patch_size=32)


@dataclasses.dataclass(frozen=True)
class ClipConfig:
  """Both towers, plus the fields only one tower or the heads use."""
  text: TowerConfig
  vision: TowerConfig
  vocab_size: int = 49408
  max_position_embeddings: int = 77
  eos_token_id: int = 49407
  image_size: int = 224
  patch_size: int = 32
  projection_dim: int = 512

  @classmethod
  def from_json(cls, path) -> "ClipConfig":
    raw = json.loads(pathlib.Path(path).read_text())
    if raw.get("model_type") != "clip":
      raise CheckpointError(f"{path}: model_type {raw.get('model_type')!r}"
                            ", expected 'clip' (a transformers CLIPModel)")
    # Old hub configs keep overrides in *_config_dict.
    text = {**_TEXT_DEFAULTS, **(raw.get("text_config") or {}),
            **(raw.get("text_config_dict") or {})}
    vision = {**_VISION_DEFAULTS, **(raw.get("vision_config") or {}),
              **(raw.get("vision_config_dict") or {})}
    towers = []
    for name, d in (("text", text), ("vision", vision)):
      tower = TowerConfig(**{f.name: d[f.name]
                             for f in dataclasses.fields(TowerConfig)
                             if f.name in d})
      if tower.hidden_act not in _ACTIVATIONS:
        raise CheckpointError(f"{path}: {name} hidden_act "
                              f"{tower.hidden_act!r} is not one of "
                              f"{sorted(_ACTIVATIONS)}")
      towers.append(tower)
    return cls(*towers, vocab_size=text["vocab_size"],
               max_position_embeddings=text["max_position_embeddings"],
               eos_token_id=text["eos_token_id"],
               image_size=vision["image_size"],
               patch_size=vision["patch_size"],
               projection_dim=raw.get("projection_dim", 512))


def _dense(features: int, name: str | None = None, bias: bool = True):
  return nn.Dense(features, use_bias=bias, precision=_HIGHEST, name=name)


class _Attention(nn.Module):
  config: TowerConfig

  @nn.compact
  def __call__(self, x, bias):
    c = self.config
    heads, d = c.num_attention_heads, c.hidden_size // c.num_attention_heads
    split = lambda t: t.reshape(*t.shape[:2], heads, d)
    q, k, v = (split(_dense(c.hidden_size, n)(x))
               for n in ("q_proj", "k_proj", "v_proj"))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k,
                        precision=_HIGHEST) * d ** -0.5
    if bias is not None:  # the text tower's causal mask
      scores = scores + bias
    probs = jax.nn.softmax(scores, axis=-1)
    att = jnp.einsum("bhqk,bkhd->bqhd", probs, v, precision=_HIGHEST)
    return _dense(c.hidden_size, "out_proj")(att.reshape(x.shape))


class _Mlp(nn.Module):
  config: TowerConfig

  @nn.compact
  def __call__(self, x):
    c = self.config
    h = _ACTIVATIONS[c.hidden_act](_dense(c.intermediate_size, "fc1")(x))
    return _dense(c.hidden_size, "fc2")(h)


class _Layer(nn.Module):
  """One pre-LayerNorm block: x + attn(ln1(x)), then x + mlp(ln2(x))."""
  config: TowerConfig

  @nn.compact
  def __call__(self, x, bias):
    c = self.config
    h = nn.LayerNorm(c.layer_norm_eps, name="layer_norm1")(x)
    x = x + _Attention(c, name="self_attn")(h, bias)
    h = nn.LayerNorm(c.layer_norm_eps, name="layer_norm2")(x)
    return x + _Mlp(c, name="mlp")(h)


class _Encoder(nn.Module):
  config: TowerConfig

  @nn.compact
  def __call__(self, x, bias=None):
    for i in range(self.config.num_hidden_layers):
      x = _Layer(self.config, name=f"layers_{i}")(x, bias)
    return x


class _TextEmbeddings(nn.Module):
  config: ClipConfig

  @nn.compact
  def __call__(self, ids):
    c = self.config
    width = c.text.hidden_size
    tokens = nn.Embed(c.vocab_size, width, name="token_embedding")(ids)
    positions = nn.Embed(c.max_position_embeddings, width,
                         name="position_embedding")(
                             jnp.arange(ids.shape[1]))
    return tokens + positions


class ClipTextTower(nn.Module):
  """ids [B, T] -> pooled [B, text hidden] (before the projection)."""
  config: ClipConfig

  @nn.compact
  def __call__(self, ids):
    c = self.config
    t = ids.shape[1]
    if t > c.max_position_embeddings:
      raise InputError(f"CLIP text of {t} tokens exceeds the "
                       f"{c.max_position_embeddings} positions")
    x = _TextEmbeddings(c, name="embeddings")(ids)
    causal = jnp.tril(jnp.ones((t, t), bool))
    bias = jnp.where(causal, 0.0, jnp.finfo(jnp.float32).min)
    x = _Encoder(c.text, name="encoder")(x, bias)
    x = nn.LayerNorm(c.text.layer_norm_eps, name="final_layer_norm")(x)
    if c.eos_token_id == 2:
      # Configs from before transformers PR #24773 carry eos_token_id 2;
      # the end token is then found as the largest id, as there.
      end = jnp.argmax(ids, axis=-1)
    else:
      end = jnp.argmax(ids == c.eos_token_id, axis=-1)
    return x[jnp.arange(x.shape[0]), end]


class _VisionEmbeddings(nn.Module):
  config: ClipConfig

  @nn.compact
  def __call__(self, pixels):
    c = self.config
    width, p = c.vision.hidden_size, c.patch_size
    cls = self.param("class_embedding", nn.initializers.normal(1.0),
                     (width,))
    patches = nn.Conv(width, (p, p), strides=(p, p), padding="VALID",
                      use_bias=False, precision=_HIGHEST,
                      name="patch_embedding")(pixels)
    b = pixels.shape[0]
    # Row-major over the patch grid, as torch's flatten(2) of NCHW.
    patches = patches.reshape(b, -1, width)
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, width)), patches], 1)
    positions = nn.Embed(x.shape[1], width, name="position_embedding")(
        jnp.arange(x.shape[1]))
    return x + positions


class ClipVisionTower(nn.Module):
  """pixels [B, S, S, 3] (normalised) -> pooled [B, vision hidden]."""
  config: ClipConfig

  @nn.compact
  def __call__(self, pixels):
    c = self.config
    if pixels.shape[1:3] != (c.image_size, c.image_size):
      raise InputError(f"CLIP vision input must be {c.image_size}x"
                       f"{c.image_size}, got {pixels.shape[1]}x"
                       f"{pixels.shape[2]}")
    eps = c.vision.layer_norm_eps
    x = _VisionEmbeddings(c, name="embeddings")(pixels.astype(jnp.float32))
    x = nn.LayerNorm(eps, name="pre_layrnorm")(x)
    x = _Encoder(c.vision, name="encoder")(x)
    return nn.LayerNorm(eps, name="post_layernorm")(x[:, 0])


class ClipModel(nn.Module):
  """Both towers and projections; `encode_*` give unnormalised embeds."""
  config: ClipConfig

  def setup(self):
    c = self.config
    self.text_model = ClipTextTower(c)
    self.vision_model = ClipVisionTower(c)
    self.visual_projection = _dense(c.projection_dim, bias=False)
    self.text_projection = _dense(c.projection_dim, bias=False)

  def encode_image(self, pixels: jax.Array) -> jax.Array:
    """[B, S, S, 3] from `ClipPreprocess` -> [B, projection_dim]."""
    return self.visual_projection(self.vision_model(pixels))

  def encode_text(self, ids: jax.Array) -> jax.Array:
    """[B, T] from `ClipTokenizer` -> [B, projection_dim]."""
    return self.text_projection(self.text_model(ids))

  def __call__(self, pixels, ids):
    return self.encode_image(pixels), self.encode_text(ids)


@dataclasses.dataclass(frozen=True)
class Clip:
  """A loaded CLIP: module, params, tokenizer and image preprocessing."""
  module: ClipModel
  params: Any
  tokenizer: ClipTokenizer
  preprocess: ClipPreprocess


def load_clip(folder) -> Clip:
  """Reads a Hugging Face CLIP folder (see the module docstring).

  Args:
    folder: holds config.json, model.safetensors and tokenizer.json.

  Returns:
    The `Clip` bundle for `image_embeds`, `text_embeds`, `clip_score`.

  Raises:
    InputError: the folder or one of its files is missing.
    CheckpointError: a config that is not CLIP's, or weights with missing
      or mis-shaped keys (each named).
  """
  folder = pathlib.Path(folder)
  for name in ("config.json", "model.safetensors", "tokenizer.json"):
    if not (folder / name).exists():
      raise InputError(
          f"{folder}: no {name}; expected a Hugging Face CLIP folder (e.g. "
          "a local copy of openai/clip-vit-large-patch14 with config.json, "
          "model.safetensors and tokenizer.json)")
  config = ClipConfig.from_json(folder / "config.json")
  module = ClipModel(config)
  abstract = torch_weights.abstract_params(
      module, jnp.zeros((1, config.image_size, config.image_size, 3)),
      jnp.zeros((1, 2), jnp.int32))
  params = torch_weights.params_from_state(
      abstract, read_safetensors(str(folder / "model.safetensors")),
      str(folder / "model.safetensors"))
  return Clip(module, params,
              ClipTokenizer(folder / "tokenizer.json",
                            config.max_position_embeddings),
              ClipPreprocess.from_folder(folder, config.image_size))


def image_embeds(clip: Clip, images: Sequence[np.ndarray], mesh=None,
                 batch_size: int = 64) -> np.ndarray:
  """Projected image embeddings [N, P] of uint8 RGB images (any sizes).

  Images are preprocessed on the host one chunk at a time, then run with
  the batch split along the mesh's data axes (`sharded.run_batched`).
  """
  return sharded.run_batched(clip.module, "encode_image", clip.params,
                             [images], mesh, batch_size,
                             prepare=lambda ims: [clip.preprocess(ims)])


def text_embeds(clip: Clip, prompts: Sequence[str], mesh=None,
                batch_size: int = 64) -> np.ndarray:
  """Projected text embeddings [N, P] of prompts."""
  return sharded.run_batched(clip.module, "encode_text", clip.params,
                             [clip.tokenizer(prompts)], mesh, batch_size)


def score_from_embeds(image_embed, text_embed) -> np.ndarray:
  """100 * max(cos, 0) per row of two [N, P] embedding arrays."""
  a, b = (np.asarray(e, np.float64) for e in (image_embed, text_embed))
  a = a / np.linalg.norm(a, axis=-1, keepdims=True)
  b = b / np.linalg.norm(b, axis=-1, keepdims=True)
  return 100.0 * np.maximum(np.sum(a * b, axis=-1), 0.0)


def clip_score(clip: Clip, images: Sequence[np.ndarray],
               prompts: Sequence[str], mesh=None,
               batch_size: int = 64) -> np.ndarray:
  """The CLIP score of each (image, prompt) pair, as in HART / MJHQ.

  Args:
    clip: from `load_clip`.
    images: N uint8 RGB images [H, W, 3] (sizes may differ).
    prompts: the N prompts they were generated from.
    mesh: a `hart_jax.sharding.make_mesh` mesh, or None.
    batch_size: images or prompts per jitted call.

  Returns:
    float64 [N] in [0, 100]; the reported number is the mean.
  """
  if isinstance(prompts, str) or len(images) != len(prompts):
    raise InputError(f"CLIP score needs one prompt per image, got "
                     f"{len(images)} images and "
                     f"{1 if isinstance(prompts, str) else len(prompts)} "
                     "prompts")
  return score_from_embeds(image_embeds(clip, images, mesh, batch_size),
                           text_embeds(clip, prompts, mesh, batch_size))
