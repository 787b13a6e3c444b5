r"""The embedded default: a small tokenizer, then a small HART, on real data.

  python -m hart_jax.train --config=configs/demo.py --workdir=out/demo

Fashion-MNIST (Debian's `dataset-fashion-mnist`, fetched with apt-get
download on first use; 70k 28x28 images padded to 32px) with its class
names as prompts: the HART stage is class-conditional on the 10 classes
("t-shirt/top", "trouser", ...). Stage 1 trains a hybrid tokenizer from
scratch (4x downsampling, 8x8 latent, schedule 1-2-3-4-6-8); stage 2 trains
HART on it. Both fit in about 12 minutes on a 2-core CPU; sample grids
(inputs / hybrid / discrete reconstructions, then one column per class) are
written to out/demo/*/samples/ as they train, TensorBoard events to
out/demo/*/tensorboard/. Pass `:steps_scale=0.1` for a 1-minute smoke run.
"""

import ml_collections

from configs import common
from configs import training_common as tc

SCHEDULE = (1, 2, 3, 4, 6, 8)
# Narrow (16-32 channels, GroupNorm of 8 groups) so that it trains in
# minutes on two cores; the released tokenizer is ch 160, ch_mult 1-1-2-2-4.
TOKENIZER = dict(ch=16, ch_mult=(1, 2, 2), norm_groups=8, vocab_size=512,
                 z_channels=32, v_patch_nums=SCHEDULE)


def _data() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      source="fashion_mnist", image_size=32,
      source_kwargs=dict(split="train")))


def _base(steps: int, batch: int, lr: float, seed: int):
  c = ml_collections.ConfigDict()
  c.seed = seed
  c.mesh = tc.mesh()
  c.rules = tc.rules()
  c.data = _data()
  c.train = tc.train(total_steps=steps, batch_size=batch, log_every=25,
                     ckpt_every=max(steps // 4, 1))
  c.optimizer = tc.optimizer(lr=lr, warmup_steps=max(steps // 20, 1),
                             weight_decay=0.0, ema_decay=0.99)
  c.export_dir = ""
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, steps_scale=1.0)
  tok_steps = max(int(700 * arg.steps_scale), 4)
  hart_steps = max(int(600 * arg.steps_scale), 4)

  tok = _base(tok_steps, 32, 2e-3, 0)
  tok.stage = "tokenizer"
  # No GAN here: on two cores the discriminator would double the step time
  # (configs/tiny.py and the tests exercise it); LPIPS is on when a weights
  # file is given with --config.tokenizer_stage.lpips_weights=FILE.
  tc.scratch_tokenizer(tok, TOKENIZER, l2=1.0, disc=0.0, disc_start=0,
                       skip_continuous_prob=0.5,
                       restart_dead_every=max(tok_steps // 10, 1),
                       restart_threshold=0.05, latent_pool=4096)
  tok.sample = ml_collections.ConfigDict(dict(every=max(tok_steps // 6, 1)))

  hart = _base(hart_steps, 32, 1e-3, 1)
  hart.stage = "hart"
  hart.model = ml_collections.ConfigDict(dict(
      num_classes=10, context_token=1, context_dim=192, depth=3,
      embed_dim=192, num_heads=3, mlp_type="llama", attn_type="llama",
      disable_aln=False, use_timestep_embed=True, patch_nums=SCHEDULE,
      diff_width=128, diff_depth=2, vocab_size=512, latent_channels=32,
      cond_drop_mode="uniform", cond_drop_rate=0.1, scan_layers=False))
  hart.tokenizer = ml_collections.ConfigDict(dict(folder="",
                                                  model=TOKENIZER))
  hart.sample = ml_collections.ConfigDict(dict(
      every=max(hart_steps // 6, 1), cfg=2.0, top_k=0, num_images=40))

  c = ml_collections.ConfigDict()
  c.stage = "demo"
  c.tokenizer_stage = tok
  c.hart_stage = hart
  c.lock()
  return c
