r"""Compile time and compiled memory of a HART training gradient, unrolled vs
scanned blocks (`scan_layers`), side by side in one process.

Nothing is executed: the gradient of the HART losses is lowered on abstract
inputs and compiled for the local backend, so the released 0.7B shape fits
on any machine.

  python -m benchmarks.scan_layers_compile                 # 0.7B, 256px
  python -m benchmarks.scan_layers_compile --res 512 --batch 4
  python -m benchmarks.scan_layers_compile --tiny          # smoke run
"""

import argparse
import time

import jax
import jax.numpy as jnp

from configs import hart_0p7b_1024
from configs import hart_tiny
from hart_jax.interop import official_transformer
from hart_jax.models.hart import training
from hart_jax.models.hart.config import from_config_dict
from hart_jax.models.hart.transformer import HartTransformer


def _abstract_batch(c, batch: int):
  f32 = jnp.float32
  sd = jax.ShapeDtypeStruct
  t = c.context_token
  return dict(
      context=sd((batch, t, c.context_dim), f32),
      context_mask=sd((batch, t), jnp.bool_),
      context_position_ids=sd((batch, t), jnp.int32),
      var_input=sd((batch, c.image_tokens - 1, c.latent_channels), f32),
      indices=[sd((batch, pn * pn), jnp.int32) for pn in c.patch_nums],
      frest_before_last=sd((batch, c.patch_nums[-1] ** 2,
                            c.latent_channels), f32))


def compile_grad(c, batch: int):
  """(seconds to lower + compile, compiled memory analysis)."""
  model = HartTransformer(c)
  params = official_transformer.abstract_params(c)
  codebook = jax.ShapeDtypeStruct((c.vocab_size, c.latent_channels),
                                  jnp.float32)

  def grad(p, b, cb, rng):
    return jax.grad(lambda q: training.hart_losses(
        model, q, b, cb, rng, deterministic=False)[0])(p)

  start = time.perf_counter()
  compiled = jax.jit(grad).lower(params, _abstract_batch(c, batch), codebook,
                                 jax.ShapeDtypeStruct((), jax.random.key(
                                     0).dtype)).compile()
  return time.perf_counter() - start, compiled.memory_analysis()


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--res", type=int, default=256)
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--remat", default="dots_no_batch")
  parser.add_argument("--tiny", action="store_true")
  args = parser.parse_args()
  if args.tiny:
    base = from_config_dict(hart_tiny.get_config().model)
  else:
    base = from_config_dict(hart_0p7b_1024.model_config(args.res))
  base = base.replace(remat=args.remat, attention_implementation="xla")
  rows = []
  for scan in (False, True):
    seconds, mem = compile_grad(base.replace(scan_layers=scan), args.batch)
    temp = getattr(mem, "temp_size_in_bytes", 0) / 2 ** 30
    rows.append((scan, seconds, temp))
  print(f"\nbackend {jax.default_backend()}, depth {base.depth}, width "
        f"{base.embed_dim}, {base.patch_nums[-1] * 16}px, batch "
        f"{args.batch}, remat {args.remat}")
  print(f"{'scan_layers':>12} {'compile s':>10} {'temp GiB':>9} "
        f"{'compile ratio':>14}")
  for scan, seconds, temp in rows:
    print(f"{str(scan):>12} {seconds:10.1f} {temp:9.2f} "
          f"{seconds / rows[0][1]:14.2f}")


if __name__ == "__main__":
  main()
