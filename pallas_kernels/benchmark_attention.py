"""Times the attention ops' xla vs pallas implementations at HART's shapes.

Run: python -m pallas_kernels.benchmark_attention [--sweep] [--check]

B = 8, H = 24, D = 64, bf16, scale 1/32. Training sequences are the 256,
512 and 1024 px schedules without their first 1x1 scale after the 300-token
text prefix (S = 979, 2539, 9750); "fwd+bwd" is jax.grad of sum(out * w)
with respect to q, k, v. "cached" is the largest scale of each schedule
(L_q = 256, 1024, 4096) and the 2x2 scale (L_q = 4) attending a full cache
of S keys. The XLA reference
materialises [B, H, S, S] logits, so it runs out of memory at S = 9750; that
prints as "oom". On CPU the pallas kernels can only be interpreted, so only
a small correctness check runs. --check compares the compiled kernels with
the reference at S = 979 on this backend; --sweep times a few block configs.

--tpu-aot TOPOLOGY (e.g. v5e:2x2, v4:2x2x1, v6e:2x2) compiles the TPU
kernels ahead of time for that TPU without one: it needs the libtpu package
importable (jax[tpu]'s pinned version) and, on a host without TPUs, the env
vars TPU_ACCELERATOR_TYPE=v5litepod-4 TPU_WORKER_HOSTNAMES=localhost. That
runs the Mosaic compiler (layouts, VMEM limits), not the kernels.
"""

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import attention
from pallas_kernels import ops

# The 256/512/1024 px patch-number schedules without their first 1x1 scale
# (hart_jax.models.hart.config); each adds pn^2 tokens after the prefix.
SCHEDULES = {
    979: (2, 3, 4, 5, 6, 8, 10, 13, 16),
    2539: (2, 3, 4, 6, 9, 13, 18, 24, 32),
    9750: (2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64),
}
PREFIX = 300
B, H, D = 8, 24, 64
SCALE = 0.25 / D ** 0.5
SWEEP = {
    "gpu": [attention.BlockCausalAttentionConfig(*b) for b in (
        (64, 64, 64, 64), (128, 64, 64, 64), (128, 128, 64, 64),
        (128, 64, 32, 64), (128, 64, 64, 32), (64, 32, 32, 32))],
    "tpu": [attention.BlockCausalAttentionConfig(*b) for b in (
        (128, 128, 128, 128), (256, 256, 256, 256), (256, 512, 256, 512),
        (512, 512, 256, 512), (512, 1024, 512, 512))],
}


def levels(seq_len):
  """int32 [S] level ids: 0 for the prefix, k for the k-th scale."""
  sizes = [PREFIX] + [p * p for p in SCHEDULES[seq_len]]
  return jnp.asarray(np.repeat(np.arange(len(sizes), dtype=np.int32), sizes))


def _time_ms(fn, *args):
  """Median wall time of fn(*args) in ms after a compile + warm-up run, or
  None when it runs out of device memory."""
  try:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(3 if jax.default_backend() == "cpu" else 10):
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times.append(time.perf_counter() - start)
  except Exception as e:  # pylint: disable=broad-except
    if "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower():
      return None
    raise
  return 1e3 * float(np.median(times))


def _inputs(b, h, s, d, dtype=jnp.bfloat16, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  return [jax.random.normal(k, (b, h, s, d), dtype) for k in keys]


def _fns(implementation, lev, config=None):
  kw = dict(scale=SCALE, implementation=implementation)
  if config is not None:
    kw["config"] = config

  def fwd(q, k, v):
    return ops.block_causal_attention(q, k, v, lev, lev, **kw)

  def loss(q, k, v, w):
    return jnp.sum(fwd(q, k, v).astype(jnp.float32) * w)

  return jax.jit(fwd), jax.jit(jax.grad(loss, (0, 1, 2)))


def _cached_fn(implementation):
  return jax.jit(lambda q, k, v, n: ops.cached_attention(
      q, k, v, n, scale=SCALE, implementation=implementation))


def check(b, h, seq_len, dtype):
  """Max |pallas - xla| / max |xla| of fwd, grads and cached at seq_len."""
  lev = levels(seq_len)
  q, k, v, w = _inputs(b, h, seq_len, D, dtype)
  rel = lambda a, r: float(jnp.max(jnp.abs(a.astype(jnp.float32) - r))
                           / jnp.max(jnp.abs(r)))
  (pf, pg), (xf, xg) = _fns("pallas", lev), _fns("xla", lev)
  errs = {"fwd": rel(pf(q, k, v), xf(q, k, v).astype(jnp.float32))}
  for name, a, r in zip(("dq", "dk", "dv"), pg(q, k, v, w), xg(q, k, v, w)):
    errs[name] = rel(a, r.astype(jnp.float32))
  lq = SCHEDULES[seq_len][-1] ** 2
  qc = q[:, :, :lq]
  n = jnp.int32(seq_len - 7)  # A cache not filled to its end.
  errs["cached"] = rel(_cached_fn("pallas")(qc, k, v, n),
                       _cached_fn("xla")(qc, k, v, n).astype(jnp.float32))
  return errs


def tpu_aot_compile(topology, seq_len):
  """Compiles fwd, grad and cached TPU kernels for `topology`; prints OK."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  topo = topologies.get_topology_desc(topology_name=topology, platform="tpu")
  mesh = jax.sharding.Mesh(np.array(topo.devices[:1]), ("x",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  sds = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype,
                                                  sharding=sharding)

  def fwd(q, k, v, lev):
    return attention.block_causal_attention_pallas_tpu(
        q, k, v, lev, lev, scale=SCALE, interpret=False)

  def grad(q, k, v, lev, w):
    return jax.grad(lambda q, k, v: jnp.sum(
        fwd(q, k, v, lev).astype(jnp.float32) * w), (0, 1, 2))(q, k, v)

  def cached(q, k, v, n):
    return attention.cached_attention_pallas_tpu(q, k, v, n, scale=SCALE,
                                                 interpret=False)

  lq = SCHEDULES[seq_len][-1] ** 2
  for dtype in (jnp.bfloat16, jnp.float32):
    qkv = [sds((B, H, seq_len, D), dtype)] * 3
    lev = sds((seq_len,), jnp.int32)
    for name, fn, args in (
        ("fwd", fwd, qkv + [lev]),
        ("fwd+bwd", grad, qkv + [lev, sds((B, H, seq_len, D), jnp.float32)]),
        ("cached", cached, [sds((B, H, lq, D), dtype)] + qkv[1:]
         + [sds((), jnp.int32)]),
        ("cached L_q=4", cached, [sds((B, H, 4, D), dtype)] + qkv[1:]
         + [sds((), jnp.int32)])):
      jax.jit(fn).lower(*args).compile()
      print(f"TPU AOT {topology} S={seq_len} {jnp.dtype(dtype).name} "
            f"{name}: compiled")


def _fmt(ms):
  return f"{'oom':>9}" if ms is None else f"{ms:9.3f}"


def _ratio(p, x):
  return f"{'-':>7}" if p is None or x is None else f"{p / x:7.2f}"


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--sweep", action="store_true",
                      help="also time a few block configs (training op)")
  parser.add_argument("--check", action="store_true",
                      help="compare compiled kernels with xla at S=979")
  parser.add_argument("--seq", type=int, nargs="*", default=list(SCHEDULES))
  parser.add_argument("--tpu-aot", metavar="TOPOLOGY",
                      help="only compile the TPU kernels for TOPOLOGY")
  args = parser.parse_args()
  if args.tpu_aot:
    for s in args.seq:
      tpu_aot_compile(args.tpu_aot, s)
    return
  backend = jax.default_backend()
  print(f"backend={backend} device={jax.devices()[0].device_kind}")
  if backend == "cpu":
    print("CPU: pallas runs interpreted here, its timings are meaningless; "
          "checking correctness only (B=1, H=2, S=979, float32).")
    print({k: f"{e:.2e}" for k, e in check(1, 2, 979, jnp.float32).items()})
    return
  if args.check:
    for dtype in (jnp.float32, jnp.bfloat16):
      errs = check(2, 4, 979, dtype)
      print(f"check {jnp.dtype(dtype).name} rel err:",
            {k: f"{e:.2e}" for k, e in errs.items()})
  print(f"B={B} H={H} D={D} bf16; times in ms (median); ratio = pallas/xla")
  print(f"{'S':>5} {'op':>8} {'config':>18} {'xla':>9} {'pallas':>9} "
        f"{'ratio':>7}")
  for s in args.seq:
    lev = levels(s)
    q, k, v, w = _inputs(B, H, s, D)
    xf, xg = _fns("xla", lev)
    x_fwd, x_bwd = _time_ms(xf, q, k, v), _time_ms(xg, q, k, v, w)
    configs = [None] + (SWEEP[backend] if args.sweep else [])
    for config in configs:
      pf, pg = _fns("pallas", lev, config)
      p_fwd, p_bwd = _time_ms(pf, q, k, v), _time_ms(pg, q, k, v, w)
      name = "default" if config is None else "x".join(
          str(x) for x in dataclasses.astuple(config))
      print(f"{s:>5} {'fwd':>8} {name:>18} {_fmt(x_fwd)} {_fmt(p_fwd)} "
            f"{_ratio(p_fwd, x_fwd)}")
      print(f"{s:>5} {'fwd+bwd':>8} {name:>18} {_fmt(x_bwd)} {_fmt(p_bwd)} "
            f"{_ratio(p_bwd, x_bwd)}")
    # The largest scale (most of sampling's attention work) and the 2x2
    # scale (bandwidth-bound: few queries against the whole cache).
    for lq in (SCHEDULES[s][-1] ** 2, 4):
      n = jnp.int32(s)
      x_c = _time_ms(_cached_fn("xla"), q[:, :, :lq], k, v, n)
      p_c = _time_ms(_cached_fn("pallas"), q[:, :, :lq], k, v, n)
      print(f"{s:>5} {'cached':>8} {f'L_q={lq}':>18} {_fmt(x_c)} "
            f"{_fmt(p_c)} {_ratio(p_c, x_c)}")


if __name__ == "__main__":
  main()
