r"""The released HART-0.7B text-to-image model (1024px schedule).

  get_config()            # 1024px, the released shape
  get_config("res=256")   # same model on the 256px schedule (curriculum)

Flags inferred in hart_spec.md 2.1 (depth 24, no per-block AdaLN,
timestep level embedding, context RMSNorm) are plain fields: a downloaded
llm/config.json overrides them when imported.
"""

import ml_collections

from configs import common
from hart_jax import schedules

SCHEDULES = schedules.BY_RESOLUTION


def model_config(res: int) -> ml_collections.ConfigDict:
  if res not in SCHEDULES:
    raise ValueError(f"res must be one of {sorted(SCHEDULES)}, got {res}")
  return ml_collections.ConfigDict(dict(
      context_token=300, context_dim=1536, depth=24, embed_dim=1536,
      num_heads=24, mlp_ratio=4.0, norm_eps=1e-6, patch_nums=SCHEDULES[res],
      mlp_type="llama", attn_type="llama", disable_aln=True,
      shared_aln=False, use_timestep_embed=True, use_context_norm=True,
      sep_aln_pooling_mode="max", attn_l2_norm=False, cond_drop_rate=0.1,
      cond_drop_mode="normal", diff_width=1024, diff_depth=6,
      num_sampling_steps="8", diffusion_batch_mul=4, vocab_size=4096,
      latent_channels=32, diffusion_target_index="sampled",
      dtype="bfloat16", remat="dots_no_batch",
      attention_implementation="auto"))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, res=1024)
  config = ml_collections.ConfigDict()
  config.model = model_config(arg.res)
  config.lock()
  return config
