r"""CPU-sized training config that tests and smoke runs share.

  python -m hart_jax.train --config=configs/tiny.py:stage=hart --workdir=DIR

Synthetic 32px images (learnable shapes per class; the PatchGAN needs at
least 32px), a tokenizer with 4x downsampling (8x8 latent, schedule
1-2-4-8) and a 2-layer HART, class-conditional or (`:cond=text`)
conditioned on the captions through the byte text encoder. Well under a
second a step on 2 cores.
"""

import ml_collections

from configs import common
from configs import training_common as tc

TOKENIZER = dict(ch=16, ch_mult=(1, 2, 2), norm_groups=8, vocab_size=256,
                 z_channels=32,
                 v_patch_nums=(1, 2, 4, 8))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, stage="hart", steps=4, cond="class")
  if arg.stage not in ("hart", "tokenizer"):
    raise ValueError(f"stage must be 'hart' or 'tokenizer', got {arg.stage}")
  if arg.cond not in ("class", "text"):
    raise ValueError(f"cond must be 'class' or 'text', got {arg.cond}")
  c = ml_collections.ConfigDict()
  c.stage = arg.stage
  c.seed = 0
  c.mesh = tc.mesh()
  c.rules = tc.rules()
  c.data = ml_collections.ConfigDict(dict(
      source="synthetic", image_size=32,
      source_kwargs=dict(num_examples=256, image_size=32, num_classes=10)))
  c.train = tc.train(total_steps=arg.steps, batch_size=8, log_every=1,
                     ckpt_every=2)
  c.optimizer = tc.optimizer(lr=3e-4, warmup_steps=1)
  # One sample grid, at the end of the run.
  c.sample = ml_collections.ConfigDict(dict(every=arg.steps, cfg=1.5,
                                            top_k=0, num_images=10))
  c.export_dir = ""
  if arg.stage == "hart":
    c.model = ml_collections.ConfigDict(dict(
        num_classes=10, context_token=1, context_dim=128, depth=2,
        embed_dim=128, num_heads=2, mlp_type="llama", attn_type="llama",
        disable_aln=False, use_timestep_embed=True, patch_nums=(1, 2, 4, 8),
        diff_width=64, diff_depth=2, vocab_size=256, latent_channels=32,
        cond_drop_mode="uniform", cond_drop_rate=0.1, remat="none",
        scan_layers=False))
    c.tokenizer = ml_collections.ConfigDict(dict(folder="",
                                                 model=TOKENIZER))
    if arg.cond == "text":
      # The synthetic captions ("a red circle") through the byte encoder,
      # run inside the step; kind=bert uses the bundled MiniLM (384-wide
      # features, hence context_dim) and kind=cache a feature cache.
      c.model.update(num_classes=0, context_token=24, context_dim=384)
      c.text_encoder = ml_collections.ConfigDict(dict(
          kind="bytes", bytes=dict(width=64, depth=1, heads=2, seed=0),
          bert=dict(path=""), cache=dict(path="")))
      c.sample.prompts = ["a red circle", "a blue square"]
      c.sample.num_images = 4
  else:
    tc.scratch_tokenizer(c, TOKENIZER, l2=0.0, disc=0.5, disc_start=2,
                         skip_continuous_prob=0.0, restart_dead_every=2,
                         restart_threshold=0.03, latent_pool=256)
  c.lock()
  return c
