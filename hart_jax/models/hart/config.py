"""Hyperparameters of the HART transformer.

Every switch of the official `HARTForT2IConfig` is a field (hart_spec.md
2.1 and 4). The defaults are the class defaults of the official code, which
do NOT match the release: use `released_0p7b()` (or configs/) for that.
"""

import dataclasses
from typing import Any

from hart_jax.errors import ConfigError
from hart_jax.schedules import (SCHEDULE_1024, SCHEDULE_256,  # pylint: disable=unused-import
                                SCHEDULE_512, dataclass_from_mapping)


@dataclasses.dataclass(frozen=True)
class HartConfig:
  """The transformer + diffusion head; fields named as in config.json."""
  context_token: int = 77
  context_dim: int = 768
  depth: int = 16
  embed_dim: int = 1024
  num_heads: int = 16
  mlp_ratio: float = 4.0
  drop_rate: float = 0.0
  attn_drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  norm_eps: float = 1e-6
  shared_aln: bool = False
  cond_drop_rate: float = 0.1
  attn_l2_norm: bool = False
  patch_nums: tuple[int, ...] = SCHEDULE_256
  mlp_type: str = "gpt2"
  attn_type: str = "gpt2"
  disable_aln: bool = False
  use_timestep_embed: bool = False
  sep_aln_pooling_mode: str = "max"
  use_context_norm: bool = False
  context_norm_scale: float = 1.0
  diff_width: int = 1024
  diff_depth: int = 6
  num_sampling_steps: str = "8"
  diffusion_batch_mul: int = 4
  # Tokenizer facts the transformer needs (official: read from the VAE).
  vocab_size: int = 4096
  latent_channels: int = 32
  # --- hart_jax-only fields --------------------------------------------
  # Class-conditional variant (VAR style): num_classes > 0 replaces the text
  # context with a one-token class embedding (index num_classes = null).
  num_classes: int = 0
  # "normal": the official quirk (drop if a N(0,1) draw < rate, P~0.54 at
  # 0.1); "uniform": drop with probability rate, as VAR does.
  cond_drop_mode: str = "normal"
  # Diffusion target relative to a token drawn from the model's logits
  # ("sampled", official) or to the ground-truth token ("ground_truth").
  diffusion_target_index: str = "sampled"
  residual_scale: float = 0.6
  dtype: str = "float32"            # compute dtype; params stay float32
  # Activation rematerialisation per block: "none" | "full" | "dots" |
  # "dots_no_batch" (hart_jax.models.hart.transformer.REMAT_POLICIES).
  remat: str = "none"
  # Run the blocks as one `nn.scan` over params stacked on a leading layer
  # axis (hart_jax.models.hart.layer_stack): one block is compiled instead
  # of `depth`. Interop and init_from convert layouts, so checkpoints and
  # exports do not depend on it.
  scan_layers: bool = False
  # "auto": the Pallas kernels where a benchmark showed a win (GPU), XLA
  # elsewhere (pallas_kernels.ops); "xla" / "pallas" force one.
  attention_implementation: str = "auto"
  # Fields of the official file that change nothing here.
  flash_if_available: bool = True
  fused_if_available: bool = True
  use_cross_attn: bool = False
  sampler: str = "iddpm"
  diffusion_head_repeats: int = 1
  vae_path: Any = None

  def __post_init__(self):
    object.__setattr__(self, "patch_nums", tuple(self.patch_nums))
    checks = [
        (self.embed_dim % self.num_heads == 0,
         f"embed_dim {self.embed_dim} is not divisible by num_heads "
         f"{self.num_heads}"),
        (self.head_dim % 4 == 0, f"head dim {self.head_dim} must be a "
         "multiple of 4 (2-D RoPE)"),
        (self.mlp_type in ("llama", "gpt2"), f"mlp_type {self.mlp_type!r}"),
        (self.attn_type in ("llama", "gpt2"), f"attn_type {self.attn_type!r}"),
        (self.sep_aln_pooling_mode in ("max", "avg"),
         f"sep_aln_pooling_mode {self.sep_aln_pooling_mode!r}"),
        (self.remat in ("none", "full", "dots", "dots_no_batch"),
         f"remat {self.remat!r}"),
        (self.cond_drop_mode in ("normal", "uniform"),
         f"cond_drop_mode {self.cond_drop_mode!r}"),
        (self.diffusion_target_index in ("sampled", "ground_truth"),
         f"diffusion_target_index {self.diffusion_target_index!r}"),
        (not self.use_cross_attn, "use_cross_attn=True is not supported (the "
         "official cross-attention is unused and needs xformers)"),
        (list(self.patch_nums) == sorted(set(self.patch_nums))
         and len(self.patch_nums) >= 2,
         f"patch_nums must increase strictly, got {self.patch_nums}"),
        (self.context_token >= 1, "context_token must be >= 1"),
        (self.num_classes == 0 or self.context_token == 1,
         "the class-conditional variant uses context_token=1"),
    ]
    for ok, message in checks:
      if not ok:
        raise ConfigError(f"invalid HartConfig: {message}")

  @property
  def head_dim(self) -> int:
    return self.embed_dim // self.num_heads

  @property
  def num_scales(self) -> int:
    return len(self.patch_nums)

  @property
  def image_tokens(self) -> int:
    """L: tokens over all scales, the 1x1 first one included."""
    return sum(pn * pn for pn in self.patch_nums)

  @property
  def seq_len(self) -> int:
    """S: the training sequence, context + all scales but the first."""
    return self.context_token + self.image_tokens - 1

  @property
  def mlp_hidden(self) -> int:
    if self.mlp_type == "llama":
      return int((self.embed_dim * self.mlp_ratio * 2) / 3 + 255) // 256 * 256
    return round(self.embed_dim * self.mlp_ratio)

  def diffusion_head_config(self):
    """The residual diffusion head's config (it conditions on width C)."""
    from hart_jax.models.diffusion_head import DiffusionHeadConfig  # pylint: disable=g-import-not-at-top
    return DiffusionHeadConfig(
        in_channels=self.latent_channels, width=self.diff_width,
        depth=self.diff_depth, cond_dim=self.embed_dim,
        num_sampling_steps=str(self.num_sampling_steps),
        vae_scale=self.residual_scale, batch_mul=self.diffusion_batch_mul)

  def replace(self, **changes) -> "HartConfig":
    return dataclasses.replace(self, **changes)


def released_0p7b(**changes) -> HartConfig:
  """hart-0.7b-1024px as inferred in hart_spec.md 2.1 (verify on download)."""
  return HartConfig(
      context_token=300, context_dim=1536, depth=24, embed_dim=1536,
      num_heads=24, patch_nums=SCHEDULE_1024, mlp_type="llama",
      attn_type="llama", disable_aln=True, use_timestep_embed=True,
      use_context_norm=True, cond_drop_rate=0.1).replace(**changes)


def from_config_dict(cfg) -> HartConfig:
  """HartConfig from a (ml_collections) mapping; unknown keys raise."""
  return dataclass_from_mapping(HartConfig, cfg, "transformer")
