r"""CPU-sized HART for tests and smoke runs (width 128, 2 layers)."""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, class_conditional=False)
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict(dict(
      context_token=8, context_dim=32, depth=2, embed_dim=128, num_heads=2,
      mlp_type="llama", attn_type="llama", disable_aln=True,
      use_timestep_embed=True, use_context_norm=True,
      patch_nums=(1, 2, 3, 4), diff_width=64, diff_depth=2,
      vocab_size=1024, latent_channels=32))
  if arg.class_conditional:
    config.model.update(num_classes=10, context_token=1, context_dim=128,
                        disable_aln=False, use_context_norm=False)
  config.lock()
  return config
