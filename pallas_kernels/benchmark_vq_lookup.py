"""Times vq_lookup's xla vs pallas implementations at HART's real shapes.

Run: python -m pallas_kernels.benchmark_vq_lookup [--sweep]

N = B * tokens: 4096 is the 1024px schedule's largest scale (64 x 64), 9451
the sum of pn^2 over all its scales. V = 4096, D = 32 as in HART. On CPU the
pallas kernel can only be interpreted, so only xla is timed there, plus a
small pallas-vs-xla check. --sweep also times a few block configs.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import ops
from pallas_kernels import VQLookupConfig

SHAPES = [(8 * 256, 4096, 32), (8 * 4096, 4096, 32), (8 * 9451, 4096, 32)]
SWEEP = {
    "gpu": [(32, 128), (64, 64), (64, 128), (64, 256), (128, 64), (128, 128)],
    "tpu": [(128, 1024), (256, 512), (256, 1024), (256, 2048), (512, 1024)],
}


def _time_ms(fn, *args):
  """Median wall time of fn(*args) in ms, after a compile + warm-up run."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(3 if jax.default_backend() == "cpu" else 20):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times))


def _inputs(n, v, d):
  kz, ke = jax.random.split(jax.random.key(0))
  return jax.random.normal(kz, (n, d)), jax.random.normal(ke, (v, d))


def _jitted(implementation, config=None):
  return jax.jit(lambda z, c: ops.vq_lookup(
      z, c, implementation=implementation, config=config))


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--sweep", action="store_true",
                      help="also time a few block configs")
  args = parser.parse_args()
  backend = jax.default_backend()
  print(f"backend={backend} device={jax.devices()[0].device_kind}")
  if backend == "cpu":
    print("CPU: pallas runs interpreted here, its timings are meaningless; "
          "timing xla only.")
    z, c = _inputs(300, 1000, 32)
    same = all(bool(jnp.array_equal(a, b)) for a, b in zip(
        _jitted("pallas")(z, c), _jitted("xla")(z, c)))
    print(f"check pallas(interpret) == xla at N=300 V=1000 D=32: {same}")
  print(f"{'N':>7} {'V':>5} {'D':>3} {'block':>10} {'xla ms':>8} "
        f"{'pallas ms':>9} {'pallas/xla':>10}")
  for n, v, d in SHAPES:
    z, c = _inputs(n, v, d)
    xla_ms = _time_ms(_jitted("xla"), z, c)
    if backend == "cpu":
      print(f"{n:>7} {v:>5} {d:>3} {'-':>10} {xla_ms:8.3f} {'-':>9} "
            f"{'-':>10}")
      continue
    ref_idx = _jitted("xla")(z, c)[0]
    configs = [None]
    if args.sweep:
      configs += [VQLookupConfig(*b) for b in SWEEP[backend]]
    for config in configs:
      fn = _jitted("pallas", config)
      # Agreement, not equality: a different f32 summation order can flip
      # a near-tie, so report the fraction of matching indices.
      agree = float(jnp.mean(fn(z, c)[0] == ref_idx))
      pallas_ms = _time_ms(fn, z, c)
      block = "default" if config is None else (
          f"{config.block_n}x{config.block_v}")
      print(f"{n:>7} {v:>5} {d:>3} {block:>10} {xla_ms:8.3f} "
            f"{pallas_ms:9.3f} {pallas_ms / xla_ms:10.2f}  agree={agree:.6f}")


if __name__ == "__main__":
  main()
