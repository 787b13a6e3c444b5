"""Official config.json files <-> hart_jax config dataclasses.

`llm/config.json` is the official `HARTForT2IConfig` (hart_spec.md 4);
`tokenizer/config.json` is `HARTAutoEncoderWithDisc`'s. Unknown keys are an
error naming them (a config of another model must not load as the wrong
one), and every field is type-checked against the dataclass, naming the
file and the field.

A class-conditional hart_jax transformer (num_classes > 0) is written with
the official `hart_transformer_c2i` model type and its `num_classes`: the
official code has that config class but no model for it, so such a folder
loads back into hart_jax only.
"""

from typing import Any

from hart_jax.errors import CheckpointError
from hart_jax.interop.config_json import build_checked, read_json_object
from hart_jax.models.hart.config import HartConfig
from hart_jax.models.tokenizer.config import TokenizerConfig
from hart_jax.schedules import SCHEDULE_256

# What the official configs record besides the model (transformers'
# PretrainedConfig fields); they are accepted and ignored.
HF_GENERIC_FIELDS = frozenset((
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
    "typical_p", "use_bfloat16", "dtype"))
# The transformers version the official code pins (hart_spec.md 6.5).
_TRANSFORMERS_VERSION = "4.42.2"

# --- transformer (llm/) ----------------------------------------------------

TRANSFORMER_FIELDS = (
    "vae_path", "context_token", "context_dim", "depth", "embed_dim",
    "num_heads", "mlp_ratio", "drop_rate", "attn_drop_rate", "drop_path_rate",
    "norm_eps", "shared_aln", "cond_drop_rate", "attn_l2_norm", "patch_nums",
    "flash_if_available", "fused_if_available", "mlp_type", "attn_type",
    "disable_aln", "use_timestep_embed", "sep_aln_pooling_mode",
    "use_cross_attn", "diff_width", "diff_depth", "num_sampling_steps",
    "diffusion_batch_mul", "sampler", "diffusion_head_repeats",
    "use_context_norm", "context_norm_scale")
T2I_MODEL_TYPE = "hart_transformer_t2i"
C2I_MODEL_TYPE = "hart_transformer_c2i"
# Fields of the official class-conditional config (VARTransformerConfig)
# that HartConfig has no use for.
_C2I_IGNORED = ("latent_condition_weight",)


def transformer_config_from_official(
    raw: dict[str, Any], vocab_size: int = 4096, latent_channels: int = 32,
    source: str = "config.json") -> HartConfig:
  """HartConfig from an official llm/config.json dict."""
  model_type = raw.get("model_type", T2I_MODEL_TYPE)
  if model_type not in (T2I_MODEL_TYPE, C2I_MODEL_TYPE):
    raise CheckpointError(f"{source}: model_type {model_type!r} is not a "
                          f"HART transformer ({T2I_MODEL_TYPE} or "
                          f"{C2I_MODEL_TYPE})")
  known = set(TRANSFORMER_FIELDS) | HF_GENERIC_FIELDS
  if model_type == C2I_MODEL_TYPE:
    known |= {"num_classes", *_C2I_IGNORED}
  unknown = sorted(set(raw) - known)
  if unknown:
    raise CheckpointError(f"{source}: unknown transformer config key(s): "
                          f"{unknown}")
  kwargs = {k: raw[k] for k in TRANSFORMER_FIELDS if k in raw}
  if model_type == C2I_MODEL_TYPE:
    if "num_classes" not in raw:
      raise CheckpointError(f"{source}: a {C2I_MODEL_TYPE} config needs "
                            "num_classes")
    kwargs["num_classes"] = raw["num_classes"]
  return build_checked(HartConfig, dict(
      kwargs, vocab_size=vocab_size, latent_channels=latent_channels),
                       source)


def transformer_config_to_official(config: HartConfig) -> dict[str, Any]:
  out = {k: getattr(config, k) for k in TRANSFORMER_FIELDS}
  out["patch_nums"] = list(config.patch_nums)
  if config.num_classes:
    out.update(model_type=C2I_MODEL_TYPE, num_classes=config.num_classes,
               architectures=["HARTForC2I"])
  else:
    out.update(model_type=T2I_MODEL_TYPE, architectures=["HARTForT2I"])
  out["transformers_version"] = _TRANSFORMERS_VERSION
  return out


def load_transformer_config(path: str, **tokenizer_facts) -> HartConfig:
  return transformer_config_from_official(read_json_object(path),
                                          source=path, **tokenizer_facts)


# --- tokenizer (tokenizer/) ------------------------------------------------

# Fields of the official HARTAutoEncoderConfig, in its order.
TOKENIZER_FIELDS = (
    "vocab_size", "z_channels", "ch", "dropout", "beta", "using_znorm",
    "quant_conv_ks", "quant_resi", "share_quant_resi", "default_qresi_counts",
    "v_patch_nums", "test_mode", "ch_mult", "levels", "quantizer_type",
    "hybrid", "disable_quant_resi", "freeze_codebook_for_hybrid",
    "double_decoder")
# hart_jax shape fields the official config hard-codes. They are written
# only when they differ from the official values (the official loader then
# keeps them as plain attributes), so a tokenizer of another shape survives
# its own export.
TOKENIZER_SHAPE_FIELDS = ("num_res_blocks", "in_channels", "norm_groups",
                          "norm_eps", "using_sa", "using_mid_sa")
TOKENIZER_MODEL_TYPE = "hart_autoencoder_with_disc"


def tokenizer_config_from_official(raw: dict[str, Any],
                                   source: str = "config.json"
                                   ) -> TokenizerConfig:
  """TokenizerConfig from an official tokenizer config.json dict."""
  unknown = sorted(set(raw) - set(TOKENIZER_FIELDS)
                   - set(TOKENIZER_SHAPE_FIELDS) - HF_GENERIC_FIELDS)
  if unknown:
    raise CheckpointError(f"{source}: unknown tokenizer config key(s): "
                          f"{unknown}")
  model_type = raw.get("model_type", TOKENIZER_MODEL_TYPE)
  if model_type not in (TOKENIZER_MODEL_TYPE, "hart_autoencoder"):
    raise CheckpointError(f"{source}: model_type {model_type!r} is not a "
                          "HART tokenizer")
  # Missing fields fall back to the official class defaults, which differ
  # from the release in one place: quantizer_type defaults to "var".
  official_defaults = dict(TokenizerConfig().__dict__,
                           v_patch_nums=SCHEDULE_256, quantizer_type="var",
                           hybrid=False)
  kwargs = {k: raw.get(k, official_defaults[k]) for k in TOKENIZER_FIELDS}
  kwargs.update({k: raw[k] for k in TOKENIZER_SHAPE_FIELDS if k in raw})
  return build_checked(TokenizerConfig, kwargs, source)


def tokenizer_config_to_official(config: TokenizerConfig) -> dict[str, Any]:
  """The config.json dict that the official `from_pretrained` reads."""
  out: dict[str, Any] = {}
  for k in TOKENIZER_FIELDS:
    v = getattr(config, k)
    out[k] = list(v) if isinstance(v, tuple) else v
  defaults = TokenizerConfig()
  for k in TOKENIZER_SHAPE_FIELDS:
    if getattr(config, k) != getattr(defaults, k):
      out[k] = getattr(config, k)
  out["model_type"] = TOKENIZER_MODEL_TYPE
  out["architectures"] = ["HARTAutoEncoderWithDisc"]
  out["transformers_version"] = _TRANSFORMERS_VERSION
  return out


def load_tokenizer_config(path: str) -> TokenizerConfig:
  return tokenizer_config_from_official(read_json_object(path), source=path)
