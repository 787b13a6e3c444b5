r"""Compiled memory of one HART training update: full fine-tuning vs frozen
parts vs LoRA (hart_jax/finetune.py), side by side in one process.

Nothing is executed: the whole update (gradient, AdamW, EMA, the
non-finite guard; the HART stage's `apply_update`) is lowered on abstract
inputs with the state donated, as the trainer compiles it, so the released
0.7B shape fits on any machine. The frozen tokenizer and text encoder are
left out (their cost is the same in every mode); the batch is the
teacher-forcing input they would produce.

  python -m benchmarks.finetune_memory                  # 0.7B, 256px
  python -m benchmarks.finetune_memory --res 512 --batch 4
  python -m benchmarks.finetune_memory --tiny           # smoke run
"""

import argparse
import time

import jax
import jax.numpy as jnp
import ml_collections

from benchmarks.scan_layers_compile import _abstract_batch
from configs import hart_0p7b_1024
from configs import hart_tiny
from configs import training_common
from hart_jax import finetune
from hart_jax.interop import official_transformer
from hart_jax.models.hart import training
from hart_jax.models.hart.config import from_config_dict
from hart_jax.models.hart.transformer import HartTransformer
from hart_jax.optimizer import learning_rate_schedule, make_optimizer
from hart_jax.steps import apply_update
from hart_jax.train_state import TrainState

MODES = {
    "full": dict(),
    # The last sixth of the blocks (4 of the release's 24).
    "frozen": dict(train_only="diffusion_head+norms+last_blocks:{n}"),
    "lora": dict(lora_rank=16, lora_targets="q+k+v+out"),
}


def _mode(mode: str, depth: int) -> dict:
  return {k: v.format(n=max(depth // 6, 1)) if isinstance(v, str) else v
          for k, v in MODES[mode].items()}


def compile_update(c, mode: str, batch: int):
  """(seconds, memory analysis, optimizer-state bytes) of one update."""
  section = ml_collections.ConfigDict(dict(
      train_only="", lora_rank=0, lora_alpha=0.0, lora_targets=""))
  section.update(_mode(mode, c.depth))
  spec = finetune.spec_from_config(ml_collections.ConfigDict(dict(
      stage="hart", finetune=section)))
  partition = finetune.Partition(spec, c) if spec.partial else None
  opt = training_common.optimizer()
  tx = make_optimizer(opt, 1000)
  model = HartTransformer(c)
  params = official_transformer.abstract_params(c)
  frozen = None
  if partition is not None:
    params, frozen = jax.eval_shape(partition.split, params,
                                    jax.random.key(0))
  sd = jax.ShapeDtypeStruct
  state = TrainState(
      step=sd((), jnp.int32), params=params,
      opt_state=jax.eval_shape(tx.init, params), ema_params=params,
      rng=sd((2,), jnp.uint32), nonfinite_streak=sd((), jnp.int32),
      nonfinite_total=sd((), jnp.int32),
      extra=None if frozen is None else {"frozen": frozen})

  def step(state, batch, codebook):
    def loss(p, b, rng):
      if partition is not None:
        p = partition.merge(p, state.extra["frozen"])
      value, _ = training.hart_losses(model, p, b, codebook, rng,
                                      deterministic=False)
      return value, {}
    return apply_update(state, loss, batch, tx,
                        learning_rate_schedule(opt, 1000), opt.ema_decay)

  start = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=0).lower(
      state, _abstract_batch(c, batch), sd((c.vocab_size, c.latent_channels),
                                           jnp.float32)).compile()
  _, opt_bytes = finetune.tree_bytes(state.opt_state)
  return time.perf_counter() - start, compiled.memory_analysis(), opt_bytes


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--res", type=int, default=256)
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--remat", default="dots_no_batch")
  parser.add_argument("--tiny", action="store_true")
  parser.add_argument("--unrolled", action="store_true",
                      help="unrolled blocks (default: scanned, as the 0.7B "
                      "configs train)")
  args = parser.parse_args()
  if args.tiny:
    base = from_config_dict(hart_tiny.get_config().model).replace(depth=4)
  else:
    base = from_config_dict(hart_0p7b_1024.model_config(args.res))
  base = base.replace(remat=args.remat, attention_implementation="xla",
                      scan_layers=not args.unrolled)
  gib = 2.0 ** 30
  print(f"backend {jax.default_backend()}, depth {base.depth}, width "
        f"{base.embed_dim}, {base.patch_nums[-1] * 16}px, batch "
        f"{args.batch}, remat {args.remat}, "
        f"{'unrolled' if args.unrolled else 'scanned'} blocks")
  print(f"{'mode':>7} {'compile s':>10} {'args GiB':>9} {'out GiB':>8} "
        f"{'temp GiB':>9} {'opt GiB':>8}   what trains")
  for mode in MODES:
    seconds, mem, opt_bytes = compile_update(base, mode, args.batch)
    what = " ".join(f"{k}={v}" for k, v in _mode(mode, base.depth).items())
    what = what or "all"
    print(f"{mode:>7} {seconds:10.1f} "
          f"{mem.argument_size_in_bytes / gib:9.3f} "
          f"{mem.output_size_in_bytes / gib:8.3f} "
          f"{mem.temp_size_in_bytes / gib:9.3f} {opt_bytes / gib:8.3f}   "
          f"{what}", flush=True)


if __name__ == "__main__":
  main()
