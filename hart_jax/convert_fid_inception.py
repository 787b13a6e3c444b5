r"""pytorch-fid's Inception weights (.pth) -> a .safetensors copy.

  python -m hart_jax.convert_fid_inception \
      --pth=pt_inception-2015-12-05-6726825d.pth --out=fid_inception.safetensors

Every key is checked against the network first. The copy needs no torch to
read (hart_jax.evals.inception.load_fid_inception reads either file).
"""

from absl import flags

from hart_jax import cli
from hart_jax.errors import InputError

_PTH = flags.DEFINE_string("pth", None, "pytorch-fid's weights file.",
                           required=True)
_OUT = flags.DEFINE_string("out", None, "The .safetensors file to write.",
                           required=True)


def main(argv):
  del argv
  from hart_jax.evals import inception  # pylint: disable=g-import-not-at-top
  from hart_jax.interop import state_dict_io  # pylint: disable=g-import-not-at-top
  if not _OUT.value.endswith(".safetensors"):
    raise InputError(f"--out {_OUT.value}: the output must end in "
                     ".safetensors")
  state = inception.safetensors_state(_PTH.value)
  state_dict_io.write_safetensors(_OUT.value, state)
  print(f"wrote {_OUT.value} ({len(state)} tensors)")


if __name__ == "__main__":
  cli.run(main)
