r"""Image -> hybrid tokens -> image, with the PSNR of each reconstruction.

  python -m hart_jax.tokenize --tokenizer=DIR --image=in.png --out=recon.png

writes the hybrid reconstruction (discrete tokens + continuous residual) to
recon.png and the discrete-only one to recon_discrete.png. DIR is an
official HART tokenizer folder (config.json + model.safetensors or
pytorch_model.bin). With --init_random, a randomly initialised tokenizer of
the official shape is first written to DIR, so this runs with no downloads.
"""

import os
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from hart_jax import cli
from hart_jax import image_io
from hart_jax import schedules
from hart_jax.errors import InputError
from hart_jax.interop import official_tokenizer
from hart_jax.models.tokenizer import HybridTokenizer
from hart_jax.models.tokenizer import config as tok_config

_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Tokenizer folder.",
                                 required=True)
_IMAGE = flags.DEFINE_string("image", None, "Input image.", required=True)
_OUT = flags.DEFINE_string("out", None, "Output PNG (hybrid recon).",
                           required=True)
_INIT_RANDOM = flags.DEFINE_bool(
    "init_random", False, "Write a random tokenizer to --tokenizer first.")
_INIT_CONFIG = flags.DEFINE_enum(
    "init_config", "official", ["official", "tiny"],
    "Shape of the --init_random tokenizer: the released one, or a small one "
    "for quick checks.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Allow --init_random to replace an existing folder.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of --init_random.")

TINY = dict(ch=32, ch_mult=(1, 1, 1, 1, 2))


def supported_sizes(config: tok_config.TokenizerConfig) -> tuple[int, ...]:
  """Image sides this tokenizer can encode: its own and the standard ones."""
  sizes = {config.image_size}
  for schedule in schedules.BY_RESOLUTION.values():
    sizes.add(schedule[-1] * config.downsample)
  return tuple(sorted(sizes))


def write_random_tokenizer(folder: str, seed: int, shape: str,
                           overwrite: bool) -> None:
  if (os.path.exists(os.path.join(folder, "config.json"))
      and not overwrite):
    raise InputError(f"{folder} already holds a tokenizer; pass --overwrite "
                     "to replace it with a random one")
  config = tok_config.TokenizerConfig(**(TINY if shape == "tiny" else {}))
  variables = official_tokenizer.init_variables(config, jax.random.key(seed))
  official_tokenizer.save_tokenizer(folder, config, variables)
  print(f"wrote a random {shape}-shape tokenizer to {folder}")


def run(tokenizer_dir: str, image_path: str, out_path: str) -> dict:
  """Round trip of one image; returns the PSNRs and output paths."""
  if os.path.isdir(out_path):
    raise InputError(f"--out {out_path} is a directory; give a .png path")
  rgb = image_io.load_rgb(image_path)
  config, variables = official_tokenizer.load_tokenizer(tokenizer_dir)
  rgb = image_io.fit_to_size(rgb, supported_sizes(config), image_path)
  if rgb.shape[0] != config.image_size:
    config = config.for_image_size(rgb.shape[0])
  model = HybridTokenizer(config)
  start = time.time()
  recon = jax.jit(lambda v, x: model.apply(
      v, x, method=HybridTokenizer.reconstruct))
  hybrid, discrete = recon(variables["vae"],
                           jnp.asarray(image_io.to_model_range(rgb))[None])
  hybrid = image_io.from_model_range(hybrid[0])
  discrete = image_io.from_model_range(discrete[0])
  stem, ext = os.path.splitext(out_path)
  discrete_path = f"{stem}_discrete{ext or '.png'}"
  image_io.save_png(out_path, hybrid)
  image_io.save_png(discrete_path, discrete)
  result = dict(psnr_hybrid=image_io.psnr(rgb, hybrid),
                psnr_discrete=image_io.psnr(rgb, discrete),
                hybrid_path=out_path, discrete_path=discrete_path,
                size=rgb.shape[0], seconds=time.time() - start)
  return result


def main(argv):
  del argv
  if _INIT_RANDOM.value:
    write_random_tokenizer(_TOKENIZER.value, _SEED.value,
                           _INIT_CONFIG.value, _OVERWRITE.value)
  r = run(_TOKENIZER.value, _IMAGE.value, _OUT.value)
  print(f"round trip (compile included) took {r['seconds']:.1f} s")
  print(f"{r['size']}px hybrid reconstruction   -> {r['hybrid_path']}  "
        f"PSNR {r['psnr_hybrid']:.2f} dB")
  print(f"{r['size']}px discrete-only recon     -> {r['discrete_path']}  "
        f"PSNR {r['psnr_discrete']:.2f} dB")


if __name__ == "__main__":
  cli.run(main)
