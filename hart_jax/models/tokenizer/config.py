"""Hyperparameters of the hybrid tokenizer.

Every size is a field (hart_spec.md section 2.1 and 3): the defaults are the
released `hart-0.7b-1024px/tokenizer`. The official config.json is
translated in hart_jax/interop/official_configs.py.
"""

import dataclasses

from hart_jax.errors import ConfigError
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
      raise ConfigError(
          f"quantizer_type {self.quantizer_type!r} is not supported: HART's "
          "tokenizer is 'var_hybrid'")
    if self.using_znorm:
      raise ConfigError("using_znorm=True (cosine codebook lookup) is not "
                        "implemented; HART uses L2 lookup")
    if list(self.v_patch_nums) != sorted(set(self.v_patch_nums)):
      raise ConfigError(f"v_patch_nums must increase strictly, got "
                        f"{self.v_patch_nums}")
    if len(self.v_patch_nums) < 2:
      raise ConfigError("v_patch_nums needs at least two scales")

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
      raise ConfigError(f"no standard schedule for {image_size}px; supported: "
                        f"{sorted(schedules)}")
    return self.replace(v_patch_nums=schedules[image_size])


def from_config_dict(cfg) -> TokenizerConfig:
  """TokenizerConfig from a (ml_collections) mapping; unknown keys raise."""
  return dataclass_from_mapping(TokenizerConfig, cfg, "tokenizer")
