r"""Class-conditional HART (ImageNet 256px), VAR-sized: depth d, width 64d.

  get_config("size=d20")   # d20 / d24 / d30

The class embedding is a one-token context (index num_classes = the null
class used for guidance), with per-block AdaLN as VAR does.
"""

import ml_collections

from configs import common
from hart_jax import schedules

SIZES = {"d20": 20, "d24": 24, "d30": 30}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, size="d20", num_classes=1000)
  if arg.size not in SIZES:
    raise ValueError(f"size must be one of {sorted(SIZES)}, got {arg.size!r}")
  d = SIZES[arg.size]
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict(dict(
      num_classes=arg.num_classes, context_token=1, context_dim=64 * d,
      depth=d, embed_dim=64 * d, num_heads=d, mlp_type="llama",
      attn_type="llama", disable_aln=False, use_timestep_embed=True,
      patch_nums=schedules.SCHEDULE_256, cond_drop_rate=0.1,
      cond_drop_mode="uniform", diff_width=1024, diff_depth=6,
      vocab_size=4096, latent_channels=32, dtype="bfloat16"))
  config.lock()
  return config
