r"""HART-0.7B, first curriculum stage (256px); args as in hart_0p7b_1024."""

from configs import hart_0p7b_1024


def get_config(arg: str | None = None):
  return hart_0p7b_1024.curriculum_stage(256, arg)
