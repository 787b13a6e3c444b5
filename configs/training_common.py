"""Blocks shared by training configs (mesh, optimizer, loop, sampling)."""

import ml_collections

from hart_jax import sharding


def mesh(data=-1, fsdp=1, tensor=1) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))


def optimizer(lr=1e-4, warmup_steps=100, weight_decay=0.05,
              ema_decay=0.999) -> ml_collections.ConfigDict:
  # VAR's trainer: AdamW (0.9, 0.95), wd 0.05, clip 2; HART's are unknown.
  # The schedule's length is train.total_steps (one source of truth).
  return ml_collections.ConfigDict(dict(
      lr=lr, b1=0.9, b2=0.95, eps=1e-8, weight_decay=weight_decay,
      warmup_steps=warmup_steps,
      final_lr_ratio=0.1, clip_norm=2.0, ema_decay=ema_decay))


def train(total_steps=1000, batch_size=32, log_every=10, ckpt_every=200,
          grad_accum=1) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      total_steps=total_steps, batch_size=batch_size, log_every=log_every,
      ckpt_every=ckpt_every, keep_last=3, keep_every=0, grad_accum=grad_accum,
      max_nonfinite_steps=20, init_from="", keep_tokens=0, keep_bucket=128))


def rules():
  return [list(r) for r in sharding.DEFAULT_RULES]


def scratch_tokenizer(c: ml_collections.ConfigDict, model: dict, *,
                      l2: float, disc: float, disc_start: int,
                      skip_continuous_prob: float, restart_dead_every: int,
                      restart_threshold: float, latent_pool: int) -> None:
  """The fields of a tokenizer stage trained from scratch (mode "scratch"),
  set on `c`; LPIPS is on when `lpips_weights` names a weights file."""
  c.mode = "scratch"
  c.model = ml_collections.ConfigDict(model)
  c.init_tokenizer = ""
  c.lpips_weights = ""
  c.loss = ml_collections.ConfigDict(dict(
      l1=1.0, l2=l2, perceptual=1.0, vq=1.0, disc=disc, disc_factor=1.0,
      disc_start=disc_start))
  c.skip_continuous_prob = skip_continuous_prob
  c.restart_dead_every = restart_dead_every
  c.restart_threshold = restart_threshold
  c.latent_pool = latent_pool
