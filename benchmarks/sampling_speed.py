r"""Text-to-image sampling speed: hart_jax vs the official PyTorch HART.

Both sides run the same randomly initialised model (the released 0.7B /
1024px shape unless --tiny) on random text features [B, T, D] whose mask
keeps the first tokens valid, as the official `encode_prompts` produces:

  * hart_jax: `sampling.make_sampler`, transformer compute in bfloat16
    (params float32); the compile is timed apart from the runs.
  * official: `HARTForT2I.autoregressive_infer_cfg` under inference_mode and
    torch.autocast(float16), as the official sample.py calls it. Runs only
    when --official_path points at a checkout of mit-han-lab/hart and CUDA
    is available; it needs transformers 4.42 importable, and the CUDA
    extension `hart_backend` (--stubs_path: a plain-torch stand-in).

The weights are drawn once in JAX and written as official `llm/` and
`tokenizer/` folders under --workdir, which the official loader reads.

  python -m benchmarks.sampling_speed --tiny              # CPU smoke run
  python -m benchmarks.sampling_speed --batches 8,1 \
      --attention_implementation pallas \
      --official_path ../hart --stubs_path stubs         # GPU comparison
"""

import argparse
import os
import statistics
import sys
import time
import traceback
import types

# Without this JAX grabs 75% of the GPU up front and the PyTorch side,
# which runs later in this process, would run out of memory.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from hart_jax import sampling  # pylint: disable=g-import-not-at-top
from hart_jax.interop import official_tokenizer, official_transformer  # pylint: disable=g-import-not-at-top
from hart_jax.models.hart.config import HartConfig, released_0p7b  # pylint: disable=g-import-not-at-top
from hart_jax.models.tokenizer import HybridTokenizer, TokenizerConfig  # pylint: disable=g-import-not-at-top

CFG = 4.5


def configs(tiny: bool, dtype: str, attention: str = "xla"):
  """(transformer, tokenizer) configs: the release, or a CPU-sized model."""
  if not tiny:
    return (released_0p7b(dtype=dtype, attention_implementation=attention),
            TokenizerConfig())
  schedule = (1, 2, 3, 4)
  t_config = HartConfig(
      context_token=8, context_dim=32, depth=2, embed_dim=128, num_heads=2,
      mlp_type="llama", attn_type="llama", disable_aln=True,
      use_timestep_embed=True, use_context_norm=True, patch_nums=schedule,
      diff_width=64, diff_depth=2, vocab_size=1024, dtype=dtype,
      attention_implementation=attention)
  return t_config, TokenizerConfig(vocab_size=1024, ch=32,
                                   v_patch_nums=schedule)


def random_context(config: HartConfig, batch: int, seed: int):
  """Features, mask and position ids shaped like `encode_prompts` output."""
  rng = np.random.default_rng(seed)
  t = config.context_token
  feats = rng.standard_normal((batch, t, config.context_dim), np.float32)
  # A ~40-token prompt, right-padded to T as the official tokenizer pads.
  mask = np.zeros((batch, t), bool)
  mask[:, :min(40, t // 2)] = True
  position_ids = np.cumsum(mask, axis=1) - 1
  return feats, mask, position_ids


def summarize(times: list[float], batch: int) -> dict[str, float]:
  median = statistics.median(times)
  return dict(latency=median, min=min(times), images_per_s=batch / median)


def time_jax(t_config, tok_config, tok_dtype, t_params, tok_vae, b, warmup,
             iters, seed):
  """Compile seconds, then latencies of the compiled sampler at batch b."""
  tokenizer = HybridTokenizer(tok_config, dtype=jnp.dtype(tok_dtype))
  sample = sampling.make_sampler(
      t_config, sampling.SamplingConfig(cfg=CFG, more_smooth=False),
      tokenizer)
  feats, mask, pos = random_context(t_config, b, seed)
  args = (t_params, tok_vae, jnp.asarray(feats), jnp.asarray(mask),
          jnp.asarray(pos, jnp.int32), jax.random.key(seed))
  start = time.perf_counter()
  compiled = sample.lower(*args).compile()
  compile_s = time.perf_counter() - start
  for _ in range(warmup):
    compiled(*args).block_until_ready()
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    images = compiled(*args).block_until_ready()
    times.append(time.perf_counter() - start)
  side = tok_config.image_size
  assert images.shape == (b, side, side, 3), images.shape
  assert bool(jnp.isfinite(images).all()), "non-finite JAX images"
  result = dict(summarize(times, b), compile_s=compile_s)
  print(f"jax   B={b}: compile {compile_s:.1f}s, "
        f"median {result['latency'] * 1e3:.1f} ms", flush=True)
  return result


def write_official_folders(workdir, t_config, tok_config, t_params,
                           tok_vars):
  """The JAX weights as official folders; returns the llm/ folder."""
  tok_dir = os.path.abspath(os.path.join(workdir, "tokenizer"))
  llm_dir = os.path.abspath(os.path.join(workdir, "llm"))
  official_tokenizer.save_tokenizer(tok_dir, tok_config, tok_vars)
  # from_pretrained reads model.safetensors; the EMA copy is not needed.
  official_transformer.save_transformer(
      llm_dir, t_config.replace(vae_path=tok_dir), t_params,
      write_ema_bin=False)
  return llm_dir


def import_official(official_path: str, stubs_path: str | None):
  """Imports HARTForT2I from a checkout of the official repository."""
  sys.path[:0] = [p for p in (stubs_path, official_path) if p]
  if "transformers" not in sys.modules:
    # The official code pins transformers 4.42, which checks numpy < 2 at
    # import; the GPU image's JAX needs numpy 2 and HART's model code runs
    # fine on it, so the version check is skipped, nothing else.
    check = types.ModuleType("transformers.dependency_versions_check")
    check.dep_version_check = lambda pkg, hint=None: None
    sys.modules[check.__name__] = check
  from hart.modules.models.transformer import HARTForT2I  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  return HARTForT2I


def load_official(hart_cls, llm_dir, device="cuda"):
  """The official model, loaded the way sample.py loads it."""
  import torch  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  return hart_cls.from_pretrained(llm_dir).to(torch.device(device)).eval()


def time_official(model, t_config, b, warmup, iters, seed):
  """Latencies of `autoregressive_infer_cfg` at batch b (sample.py style)."""
  import torch  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  device = next(model.parameters()).device
  sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
  # sample.py uses float16 autocast; CPU (smoke runs only) wants bfloat16.
  half = torch.float16 if device.type == "cuda" else torch.bfloat16
  feats, mask, pos = random_context(t_config, b, seed)
  kwargs = dict(
      B=b, label_B=torch.from_numpy(feats).to(device), cfg=CFG, top_p=0.0,
      g_seed=seed, more_smooth=False,
      context_position_ids=torch.from_numpy(pos).long().to(device),
      context_mask=torch.from_numpy(mask).to(device))
  times = []
  with torch.inference_mode(), torch.autocast(device.type, dtype=half):
    for i in range(warmup + iters):
      sync()
      start = time.perf_counter()
      images = model.autoregressive_infer_cfg(**kwargs)
      sync()
      if i >= warmup:
        times.append(time.perf_counter() - start)
  assert images.shape[:2] == (b, 3), images.shape
  assert bool(torch.isfinite(images).all()), "non-finite official images"
  result = summarize(times, b)
  print(f"torch B={b}: median {result['latency'] * 1e3:.1f} ms", flush=True)
  return result


def print_table(jax_res, torch_res, jax_peak, torch_peak):
  """Markdown table; ratio = jax latency / torch latency (<1: JAX faster)."""
  print("\n| batch | impl | median latency (s) | min (s) | images/s "
        "| JAX compile (s) | jax/torch latency |")
  print("| --- | --- | --- | --- | --- | --- | --- |")
  for b in sorted(jax_res):
    j, t = jax_res[b], torch_res.get(b)
    ratio = f"{j['latency'] / t['latency']:.2f}" if t else "-"
    print(f"| {b} | hart_jax | {j['latency']:.3f} | {j['min']:.3f} | "
          f"{j['images_per_s']:.2f} | {j['compile_s']:.1f} | {ratio} |")
    if t:
      print(f"| {b} | official | {t['latency']:.3f} | {t['min']:.3f} | "
            f"{t['images_per_s']:.2f} | - | |")
  gib = lambda n: f"{n / 2**30:.1f} GiB" if n else "n/a"
  print(f"\npeak device memory: hart_jax {gib(jax_peak)}, "
        f"official {gib(torch_peak)}")


def official_available(args) -> bool:
  if not args.official_path:
    return False
  try:
    import torch  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  except ImportError:
    print("official side skipped: torch is not installed")
    return False
  if not torch.cuda.is_available():
    print("official side skipped: CUDA is not available")
    return False
  return True


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batches", default="1,8")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--iters", type=int, default=5)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--dtype", default="bfloat16",
                      help="hart_jax transformer compute dtype")
  # The official decoder runs under float16 autocast; bfloat16 matches that.
  parser.add_argument("--tokenizer_dtype", default="bfloat16")
  # "xla" materialises [2B, H, 4096, 9750] fp32 scores at the last scale
  # (57 GiB at B=8, over an H100's memory); "pallas" is a flash kernel.
  parser.add_argument("--attention_implementation", default="xla",
                      choices=("xla", "pallas", "auto"))
  parser.add_argument("--tiny", action="store_true",
                      help="CPU-sized model and 64px schedule")
  parser.add_argument("--official_path", default=None)
  parser.add_argument("--stubs_path", default=None)
  parser.add_argument("--workdir", default=".bench/model")
  args = parser.parse_args(argv)
  batches = [int(b) for b in args.batches.split(",")]
  t_config, tok_config = configs(args.tiny, args.dtype,
                                 args.attention_implementation)
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; "
        f"schedule {t_config.patch_nums}, depth {t_config.depth}, "
        f"width {t_config.embed_dim}, attention "
        f"{t_config.attention_implementation}", flush=True)
  key_t, key_tok = jax.random.split(jax.random.key(args.seed))
  t_params = official_transformer.init_params(t_config, key_t)
  tok_vars = official_tokenizer.init_variables(tok_config, key_tok)
  model = None
  if official_available(args):
    llm_dir = write_official_folders(args.workdir, t_config, tok_config,
                                     t_params, tok_vars)
    import torch  # pylint: disable=g-import-not-at-top,import-outside-toplevel
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}",
          flush=True)
    model = load_official(import_official(args.official_path,
                                          args.stubs_path), llm_dir)
  jax_res, torch_res = {}, {}
  # Interleaved per batch, so a run cut short still has comparable rows.
  for b in batches:
    jax_res[b] = time_jax(t_config, tok_config, args.tokenizer_dtype,
                          t_params, tok_vars["vae"], b, args.warmup,
                          args.iters, args.seed)
    if model is not None:
      try:
        torch_res[b] = time_official(model, t_config, b, args.warmup,
                                     args.iters, args.seed)
      except Exception:  # pylint: disable=broad-except
        # Keep the JAX rows (e.g. the official side out of memory).
        traceback.print_exc()
  jax_peak = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
  torch_peak = None
  if model is not None:
    import torch  # pylint: disable=g-import-not-at-top,import-outside-toplevel
    torch_peak = torch.cuda.max_memory_allocated()
  print_table(jax_res, torch_res, jax_peak, torch_peak)


if __name__ == "__main__":
  main()
