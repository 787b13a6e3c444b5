r"""The hybrid tokenizer's shape.

  get_config("variant=official,res=1024")  # the released tokenizer
  get_config("variant=tiny,res=256")       # CPU-sized, for tests and demos

`hart_jax.models.tokenizer.config.from_config_dict(cfg.model)` turns the
`model` block into the frozen TokenizerConfig the modules take.
"""

import ml_collections

from configs import common
from hart_jax import schedules

_SCHEDULES = schedules.BY_RESOLUTION
_VARIANTS = {
    "official": dict(ch=160, ch_mult=(1, 1, 2, 2, 4)),
    "tiny": dict(ch=32, ch_mult=(1, 1, 1, 1, 2)),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, variant="official", res=1024)
  if arg.variant not in _VARIANTS:
    raise ValueError(f"variant must be one of {sorted(_VARIANTS)}, got "
                     f"{arg.variant!r}")
  if arg.res not in _SCHEDULES:
    raise ValueError(f"res must be one of {sorted(_SCHEDULES)}, got "
                     f"{arg.res}")
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict(dict(
      vocab_size=4096,
      z_channels=32,
      num_res_blocks=2,
      v_patch_nums=_SCHEDULES[arg.res],
      quant_resi=0.5,
      share_quant_resi=4,
      beta=0.25,
      skip_continuous_prob=0.0,
      vq_implementation="auto",
      **_VARIANTS[arg.variant]))
  config.lock()  # overriding an unknown field fails instead of adding it
  return config
