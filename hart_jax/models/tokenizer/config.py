"""Hyperparameters of the hybrid tokenizer, and its official config.json.

Every size is a field (hart_spec.md section 2.1 and 3): the defaults are the
released `hart-0.7b-1024px/tokenizer`. The official config.json is read and
written here so the folder round-trips through the official loader.
"""

import dataclasses
import json
from typing import Any

from hart_jax.schedules import (SCHEDULE_1024, SCHEDULE_256,  # pylint: disable=unused-import
                                SCHEDULE_512, BY_RESOLUTION,
                                dataclass_from_mapping)


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
  """Shape and behaviour of the hybrid tokenizer (all official fields)."""
  vocab_size: int = 4096
  z_channels: int = 32
  ch: int = 160
  ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
  # Not in the official config (hard-coded there): kept as fields so
  # smaller or larger tokenizers need no code change.
  num_res_blocks: int = 2            # encoder; the decoder uses one more
  in_channels: int = 3
  norm_groups: int = 32
  norm_eps: float = 1e-6
  using_sa: bool = True              # attention at the lowest level
  using_mid_sa: bool = True          # attention in the middle block
  dropout: float = 0.0
  beta: float = 0.25                 # commitment weight in the VQ loss
  using_znorm: bool = False
  quant_conv_ks: int = 3
  quant_resi: float = 0.5            # phi(h) = (1-r) h + r conv(h)
  share_quant_resi: int = 4          # 0: one phi per scale, 1: one phi
  default_qresi_counts: int = 0
  v_patch_nums: tuple[int, ...] = SCHEDULE_1024
  double_decoder: bool = False
  # Training-only knob (official default 0.0: always continuous).
  skip_continuous_prob: float = 0.0
  # Fields the official config carries but the math never reads.
  test_mode: bool = False
  levels: tuple[int, ...] = (8, 8, 8, 6, 5)
  quantizer_type: str = "var_hybrid"
  hybrid: bool = True
  disable_quant_resi: bool = False
  freeze_codebook_for_hybrid: bool = True
  # Nearest-codeword backend: "auto" | "xla" | "pallas" (pallas_kernels).
  vq_implementation: str = "auto"

  def __post_init__(self):
    for name in ("ch_mult", "v_patch_nums", "levels"):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    if self.quantizer_type != "var_hybrid":
      raise ValueError(
          f"quantizer_type {self.quantizer_type!r} is not supported: HART's "
          "tokenizer is 'var_hybrid'")
    if self.using_znorm:
      raise ValueError("using_znorm=True (cosine codebook lookup) is not "
                       "implemented; HART uses L2 lookup")
    if list(self.v_patch_nums) != sorted(set(self.v_patch_nums)):
      raise ValueError(f"v_patch_nums must increase strictly, got "
                       f"{self.v_patch_nums}")
    if len(self.v_patch_nums) < 2:
      raise ValueError("v_patch_nums needs at least two scales")

  @property
  def downsample(self) -> int:
    return 2 ** (len(self.ch_mult) - 1)

  @property
  def image_size(self) -> int:
    """Image side that the schedule's last scale covers."""
    return self.v_patch_nums[-1] * self.downsample

  @property
  def num_phi(self) -> int:
    if self.share_quant_resi == 0:
      return self.default_qresi_counts or len(self.v_patch_nums)
    if self.share_quant_resi == 1:
      return 1
    return self.share_quant_resi

  def replace(self, **changes) -> "TokenizerConfig":
    return dataclasses.replace(self, **changes)

  def for_image_size(self, image_size: int) -> "TokenizerConfig":
    """This tokenizer with the standard schedule for another resolution."""
    schedules = {s[-1] * self.downsample: s
                 for s in BY_RESOLUTION.values()}
    if image_size not in schedules:
      raise ValueError(f"no standard schedule for {image_size}px; supported: "
                       f"{sorted(schedules)}")
    return self.replace(v_patch_nums=schedules[image_size])


def from_config_dict(cfg) -> TokenizerConfig:
  """TokenizerConfig from a (ml_collections) mapping; unknown keys raise."""
  return dataclass_from_mapping(TokenizerConfig, cfg, "tokenizer")


# Fields of the official HARTAutoEncoderConfig, in its order.
_OFFICIAL_FIELDS = (
    "vocab_size", "z_channels", "ch", "dropout", "beta", "using_znorm",
    "quant_conv_ks", "quant_resi", "share_quant_resi", "default_qresi_counts",
    "v_patch_nums", "test_mode", "ch_mult", "levels", "quantizer_type",
    "hybrid", "disable_quant_resi", "freeze_codebook_for_hybrid",
    "double_decoder")

# Generic transformers.PretrainedConfig fields that may appear in the file.
_HF_GENERIC_FIELDS = frozenset((
    "_name_or_path", "add_cross_attention", "architectures",
    "bad_words_ids", "begin_suppress_tokens", "bos_token_id",
    "chunk_size_feed_forward", "cross_attention_hidden_size",
    "decoder_start_token_id", "diversity_penalty", "do_sample",
    "early_stopping", "encoder_no_repeat_ngram_size", "eos_token_id",
    "exponential_decay_length_penalty", "finetuning_task",
    "forced_bos_token_id", "forced_eos_token_id", "id2label",
    "is_decoder", "is_encoder_decoder", "label2id", "length_penalty",
    "max_length", "min_length", "model_type", "no_repeat_ngram_size",
    "num_beam_groups", "num_beams", "num_return_sequences",
    "output_attentions", "output_hidden_states", "output_scores",
    "pad_token_id", "prefix", "problem_type", "pruned_heads",
    "remove_invalid_values", "repetition_penalty", "return_dict",
    "return_dict_in_generate", "sep_token_id", "suppress_tokens",
    "task_specific_params", "temperature", "tf_legacy_loss",
    "tie_encoder_decoder", "tie_word_embeddings", "tokenizer_class",
    "top_k", "top_p", "torch_dtype", "torchscript", "transformers_version",
    "typical_p", "use_bfloat16"))

# hart_jax shape fields the official config hard-codes. They are written
# only when they differ from the official values (the official loader then
# keeps them as plain attributes), so a tokenizer of another shape survives
# its own export.
_SHAPE_FIELDS = ("num_res_blocks", "in_channels", "norm_groups", "norm_eps",
                 "using_sa", "using_mid_sa")

OFFICIAL_MODEL_TYPE = "hart_autoencoder_with_disc"


def config_from_official(raw: dict[str, Any]) -> TokenizerConfig:
  """Builds a TokenizerConfig from an official tokenizer config.json dict.

  Unknown keys are an error (naming them) rather than silently ignored, so a
  config from a newer or different model does not load as the wrong one.
  """
  unknown = (set(raw) - set(_OFFICIAL_FIELDS) - set(_SHAPE_FIELDS)
             - _HF_GENERIC_FIELDS)
  if unknown:
    raise ValueError(f"unknown tokenizer config key(s): {sorted(unknown)}")
  model_type = raw.get("model_type", OFFICIAL_MODEL_TYPE)
  if model_type not in (OFFICIAL_MODEL_TYPE, "hart_autoencoder"):
    raise ValueError(f"config.json model_type {model_type!r} is not a HART "
                     "tokenizer")
  # Missing fields fall back to the official class defaults, which differ
  # from the release in one place: quantizer_type defaults to "var".
  official_defaults = dict(TokenizerConfig().__dict__,
                           v_patch_nums=SCHEDULE_256, quantizer_type="var",
                           hybrid=False)
  kwargs = {k: raw.get(k, official_defaults[k]) for k in _OFFICIAL_FIELDS}
  kwargs.update({k: raw[k] for k in _SHAPE_FIELDS if k in raw})
  return TokenizerConfig(**kwargs)


def config_to_official(config: TokenizerConfig) -> dict[str, Any]:
  """The config.json dict that the official `from_pretrained` reads."""
  out: dict[str, Any] = {}
  for k in _OFFICIAL_FIELDS:
    v = getattr(config, k)
    out[k] = list(v) if isinstance(v, tuple) else v
  defaults = TokenizerConfig()
  for k in _SHAPE_FIELDS:
    if getattr(config, k) != getattr(defaults, k):
      out[k] = getattr(config, k)
  out["model_type"] = OFFICIAL_MODEL_TYPE
  out["architectures"] = ["HARTAutoEncoderWithDisc"]
  out["transformers_version"] = "4.42.2"
  return out


def load_official_config(path: str) -> TokenizerConfig:
  try:
    with open(path) as f:
      raw = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON: {e}") from e
  if not isinstance(raw, dict):
    raise ValueError(f"{path} must hold a JSON object")
  return config_from_official(raw)
