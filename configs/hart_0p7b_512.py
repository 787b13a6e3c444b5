r"""HART-0.7B on the 512px schedule (a stage of the resolution curriculum)."""

from configs import hart_0p7b_1024


def get_config(arg: str | None = None):
  del arg
  return hart_0p7b_1024.get_config("res=512")
