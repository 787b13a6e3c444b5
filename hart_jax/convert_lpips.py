r"""LPIPS weights (torch files) -> the one file the tokenizer stage reads.

  python -m hart_jax.convert_lpips --vgg=vgg16-397923af.pth \
      --lin=lpips/weights/v0.1/vgg.pth --out=lpips_vgg.safetensors

`--vgg` is torchvision's VGG16 state dict, `--lin` the `lpips` package's
linear-layer weights; both are read with torch.load(weights_only=True).
Then train with `--config.lpips_weights=lpips_vgg.safetensors`.
"""

from absl import flags

from hart_jax import cli
from hart_jax.interop import state_dict_io
from hart_jax.losses import lpips

_VGG = flags.DEFINE_string("vgg", None, "torchvision vgg16 state dict "
                           "(e.g. vgg16-397923af.pth).", required=True)
_LIN = flags.DEFINE_string("lin", None, "lpips weights/v0.1/vgg.pth.",
                           required=True)
_OUT = flags.DEFINE_string("out", None, "Output .safetensors or .npz.",
                           required=True)


def main(argv):
  del argv
  tensors = lpips.convert_torch_lpips(
      state_dict_io.read_state_dict(_VGG.value),
      state_dict_io.read_state_dict(_LIN.value))
  lpips.save_lpips_params(_OUT.value, tensors)
  lpips.load_lpips_params(_OUT.value)  # fails loudly now, not in training
  print(f"wrote {_OUT.value} ({len(tensors)} tensors)")


if __name__ == "__main__":
  cli.run(main)
