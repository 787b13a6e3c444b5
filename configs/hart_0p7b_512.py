r"""HART-0.7B, second curriculum stage (512px; init_from the 256px run);
args as in hart_0p7b_1024."""

from configs import hart_0p7b_1024


def get_config(arg: str | None = None):
  return hart_0p7b_1024.curriculum_stage(512, arg)
