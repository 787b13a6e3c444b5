r"""HART-0.7B text-to-image, trained on the resolution curriculum.

  python -m hart_jax.train --workdir=out/256 \
      --config=configs/hart_0p7b_256.py:data=folder:/data/images,tokenizer=hart-0.7b-1024px/tokenizer,text_features=/data/qwen2_features.npz
  python -m hart_jax.train --workdir=out/512 \
      --config=configs/hart_0p7b_512.py:...,init_from=out/256
  python -m hart_jax.train --workdir=out/1024 \
      --config=configs/hart_0p7b_1024.py:...,init_from=out/512

Args (all but `res` can also be set as --config.x.y overrides):
  res            256 | 512 | 1024: the scale schedule and image size.
  data           a hart_jax.data source name: folder:/path (captions from
                 sidecar .txt files), tfds:name[:split], ...
  tokenizer      an official HART tokenizer/ folder (frozen in the step).
  text_features  a feature cache of the captions (python -m
                 hart_jax.cache_text_features): [N, 300, 1536] text
                 features, e.g. from HART's Qwen2 encoder run offline. The byte encoder is the in-step
                 alternative (--config.text_encoder.kind=bytes).
  init_from      the previous curriculum stage's workdir. With the released
                 flags (timestep level embedding, RoPE) no parameter depends
                 on the schedule, so every weight carries over unchanged; a
                 learned level table or gpt2 positions would be converted
                 (hart_jax.checkpointing.convert_params) and logged.

Model flags inferred in hart_spec.md 2.1 (depth 24, no per-block AdaLN,
timestep level embedding, context RMSNorm) are plain fields; a downloaded
llm/config.json overrides them when imported. HART's optimizer, batch and
schedule are unknown (hart_spec.md 5): these are VAR's (AdamW 0.9/0.95,
wd 0.05, lr 1e-4 at batch 256, clip 2), with an EMA of 0.9999.
"""

import ml_collections

from configs import common
from configs import training_common as tc
from hart_jax import schedules

SCHEDULES = schedules.BY_RESOLUTION
# Steps per curriculum stage (not published; a starting point).
STEPS = {256: 200_000, 512: 60_000, 1024: 40_000}
PROMPTS = ("a photo of an astronaut riding a horse on the moon",
           "a red sports car parked in front of a modern house",
           "a bowl of ramen with an egg, studio lighting",
           "an oil painting of a lighthouse in a storm")


def model_config(res: int) -> ml_collections.ConfigDict:
  """The released transformer + diffusion head on the `res` schedule."""
  if res not in SCHEDULES:
    raise ValueError(f"res must be one of {sorted(SCHEDULES)}, got {res}")
  return ml_collections.ConfigDict(dict(
      context_token=300, context_dim=1536, depth=24, embed_dim=1536,
      num_heads=24, mlp_ratio=4.0, norm_eps=1e-6, patch_nums=SCHEDULES[res],
      mlp_type="llama", attn_type="llama", disable_aln=True,
      shared_aln=False, use_timestep_embed=True, use_context_norm=True,
      sep_aln_pooling_mode="max", attn_l2_norm=False, cond_drop_rate=0.1,
      cond_drop_mode="normal", diff_width=1024, diff_depth=6,
      num_sampling_steps="8", diffusion_batch_mul=4, vocab_size=4096,
      latent_channels=32, diffusion_target_index="sampled",
      dtype="bfloat16", remat="dots_no_batch", scan_layers=False,
      attention_implementation="auto"))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, res=1024, data="", tokenizer="",
                         text_features="", init_from="", steps=0,
                         batch=256)
  steps = arg.steps or STEPS.get(arg.res, 0)
  c = ml_collections.ConfigDict()
  c.stage = "hart"
  c.seed = 0
  # 0.7B params + AdamW state: shard them over every device (FSDP).
  c.mesh = tc.mesh(data=1, fsdp=-1)
  c.rules = tc.rules()
  c.model = model_config(arg.res)
  # Training scans the 24 blocks: on CPU the 256px gradient compiles in
  # 0.40x the time with 0.20x the temporary memory of the unrolled blocks
  # (benchmarks/scan_layers_compile.py); weights are layout-independent.
  c.model.scan_layers = True
  c.data = ml_collections.ConfigDict(dict(
      source=arg.data, image_size=arg.res, source_kwargs={}))
  c.tokenizer = ml_collections.ConfigDict(dict(folder=arg.tokenizer))
  c.text_encoder = ml_collections.ConfigDict(dict(
      kind="cache", cache=dict(path=arg.text_features),
      bytes=dict(width=256, depth=2, heads=4, seed=0)))
  c.train = tc.train(total_steps=steps, batch_size=arg.batch,
                     log_every=50, ckpt_every=2000)
  c.train.keep_every = 20_000
  c.train.init_from = arg.init_from
  c.optimizer = tc.optimizer(lr=1e-4 * arg.batch / 256, warmup_steps=2000,
                             ema_decay=0.9999)
  c.sample = ml_collections.ConfigDict(dict(
      every=5000, cfg=4.5, top_k=600, num_images=len(PROMPTS),
      prompts=list(PROMPTS)))
  c.export_dir = ""
  c.lock()
  return c


def curriculum_stage(res: int, arg: str | None):
  """get_config for the files whose name fixes the resolution."""
  names = [item.partition("=")[0] for item in (arg or "").split(",")]
  if "res" in names:
    raise ValueError(f"this config is the {res}px stage; drop res= from "
                     "its args")
  return get_config(f"res={res}" + (f",{arg}" if arg else ""))
