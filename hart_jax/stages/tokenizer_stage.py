"""The tokenizer stage: train the hybrid tokenizer from scratch, or
fine-tune HART's decoder on it (hart_spec.md 3).

mode "scratch": everything trains; losses L1/L2 + VQ/commitment + LPIPS
(if its weights file is configured) + PatchGAN hinge with adaptive weight
after `disc_start`; codebook usage per scale is logged and dead codes can be
restarted from recent encoder latents.
mode "hybrid_decoder": HART's decoder fine-tuning: encoder, quant_conv and
quantizer (codebook + phi) frozen, post_quant_conv + decoder train, and the
decoder sees discrete-only and continuous latents alternately
(`skip_continuous_prob`, 0.5 by default in the configs).
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hart_jax.errors import ConfigError
from hart_jax import sharding
from hart_jax.interop import official_tokenizer
from hart_jax.losses import codebook as cb
from hart_jax.losses import gan
from hart_jax.losses.lpips import make_lpips
from hart_jax.losses.reconstruction import LossWeights, tokenizer_loss
from hart_jax.models.tokenizer import HybridTokenizer, PatchDiscriminator
from hart_jax.models.tokenizer.config import TokenizerConfig
from hart_jax.optimizer import learning_rate_schedule, make_optimizer
from hart_jax.stages.common import Stage, create_state, image_grid
from hart_jax.steps import apply_update

KERNEL = ("decoder", "conv_out", "kernel")
_TRAINABLE_HYBRID = ("post_quant_conv", "decoder")


def _labels(params, mode):
  """'train' / 'freeze' per top-level module (multi_transform labels)."""
  return {k: jax.tree.map(lambda _: "train" if mode == "scratch"
                          or k in _TRAINABLE_HYBRID else "freeze", v)
          for k, v in params.items()}


def _loss_fn(params, batch, rng, *, model, disc, lpips, weights, extra,
             factor, p_skip):
  images = batch["image"]
  variables = {"params": params, "buffers": extra["buffers"]}
  f = model.apply(variables, images, method=HybridTokenizer.encode_latent)
  q = model.apply(variables, f, rng, p_skip, method=lambda m, *a: m.quantize
                  .train_forward(*a))
  disc_vars = {"params": extra["disc_params"],
               "batch_stats": extra["disc_stats"]}

  def decode(kernel):
    p = gan.replace_leaf(params, KERNEL, kernel)
    return model.apply({"params": p, "buffers": extra["buffers"]},
                       q["fhat"], method=HybridTokenizer.decode)

  def rec_of(img):
    from hart_jax.losses.reconstruction import reconstruction_loss  # pylint: disable=g-import-not-at-top
    return reconstruction_loss(images, img, lpips(images, img), weights)[0]

  def gan_of(img):
    logits, _ = disc.apply(disc_vars, img, True, mutable=["batch_stats"])
    return gan.generator_loss(logits)

  if weights.disc > 0:
    recon, a_w = gan.decode_with_adaptive_weight(
        decode, gan.get_leaf(params, KERNEL), rec_of, gan_of, weights.disc)
    g_loss = gan_of(recon)
  else:
    recon, a_w, g_loss = decode(gan.get_leaf(params, KERNEL)), 0.0, 0.0
  total, m = tokenizer_loss(images, recon, vq_loss=q["vq_loss"],
                            perceptual=lpips(images, recon), g_loss=g_loss,
                            adaptive_weight=a_w, disc_factor=factor,
                            weights=weights)
  m.update(aux_recon=jax.lax.stop_gradient(recon), aux_hits=q["hits"],
           aux_latents=jax.lax.stop_gradient(f.reshape(-1, f.shape[-1])),
           used_continuous=q["used_continuous"].astype(jnp.float32))
  return total, m


def _step(state, batch, frozen, *, model, disc, weights, tx, schedule,
          ema_decay, accum, disc_tx, p_skip, restart_every, restart_threshold):
  ex = state.extra
  lpips = frozen["lpips"]
  factor = gan.disc_start_factor(state.step, weights.disc_start,
                                 weights.disc_factor)
  loss = functools.partial(_loss_fn, model=model, disc=disc, lpips=lpips,
                           weights=weights, extra=ex, factor=factor,
                           p_skip=p_skip)
  new, m = apply_update(state, loss, batch, tx, schedule, ema_decay, accum)
  images = batch["image"]
  recon = m.pop("aux_recon")
  if accum > 1:  # microbatch reconstructions were averaged: redo it
    recon = jax.lax.stop_gradient(model.apply(
        {"params": new.params, "buffers": ex["buffers"]}, images,
        jax.random.wrap_key_data(state.rng), False, p_skip)["recon"])
  hits, latents = m.pop("aux_hits"), m.pop("aux_latents")

  def d_loss(dp):
    vs = {"params": dp, "batch_stats": ex["disc_stats"]}
    real, s1 = disc.apply(vs, images, True, mutable=["batch_stats"])
    fake, s2 = disc.apply({"params": dp, **s1}, recon, True,
                          mutable=["batch_stats"])
    return factor * gan.hinge_discriminator_loss(real, fake), s2

  if weights.disc > 0:
    (d_val, d_stats), d_grads = jax.value_and_grad(d_loss, has_aux=True)(
        ex["disc_params"])
    d_updates, d_opt = disc_tx.update(d_grads, ex["disc_opt"],
                                      ex["disc_params"])
  else:  # no GAN configured: the discriminator is carried, never trained
    d_val, d_stats = jnp.float32(0), {"batch_stats": ex["disc_stats"]}
    d_updates = jax.tree.map(jnp.zeros_like, ex["disc_params"])
    d_opt = ex["disc_opt"]
  # Official VAR bookkeeping of per-scale code hits (the exported buffer).
  old = ex["buffers"]["quantize"]["ema_vocab_hit_SV"]
  ema_hits = jnp.where(state.step == 0, hits, 0.99 * old + 0.01 * hits)
  buffers = {"quantize": {"ema_vocab_hit_SV": ema_hits}}
  pool, ptr = cb.update_latent_pool(ex["pool"], ex["pool_ptr"],
                                    latents[:ex["pool"].shape[0]])
  params, restarted = new.params, jnp.int32(0)
  if restart_every > 0:
    def restart(args):
      p, hits_sv = args
      dead = cb.dead_code_mask(hits_sv.sum(0), restart_threshold)
      code, n = cb.restart_dead_codes(
          jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step),
          p["quantize"]["embedding"], hits_sv.sum(0), pool,
          restart_threshold)
      # Restarted codes must not look dead again at the next restart.
      hits_sv = jnp.where(dead[None], restart_threshold, hits_sv)
      return (gan.replace_leaf(p, ("quantize", "embedding"), code),
              hits_sv), n
    do = (new.step % restart_every == 0) & (new.step > 0)
    (params, ema_hits), restarted = jax.lax.cond(
        do, restart, lambda a: (a, jnp.int32(0)), (params, ema_hits))
    buffers = {"quantize": {"ema_vocab_hit_SV": ema_hits}}
  usage = cb.codebook_usage(hits)
  m.update(d_loss=d_val, restarted_codes=restarted.astype(jnp.float32),
           perplexity_all=usage["perplexity_all"],
           used_fraction_all=usage["used_fraction_all"])
  for k in range(hits.shape[0]):
    m[f"perplexity_s{k}"] = usage["perplexity"][k]
    m[f"used_fraction_s{k}"] = usage["used_fraction"][k]
  extra = dict(ex, disc_params=optax.apply_updates(ex["disc_params"],
                                                   d_updates),
               disc_opt=d_opt, disc_stats=d_stats["batch_stats"],
               buffers=buffers, pool=pool, pool_ptr=ptr)
  return new.replace(params=params, extra=extra), m


def build(config, mesh, rules, rng) -> Stage:
  """State, step and sample grid of the tokenizer stage."""
  mode = config.mode
  if mode not in ("scratch", "hybrid_decoder"):
    raise ConfigError(f"tokenizer mode must be 'scratch' or "
                      f"'hybrid_decoder', got {mode!r}")
  r_init, r_disc = jax.random.split(rng)
  if config.get("init_tokenizer"):
    tc, loaded = official_tokenizer.load_tokenizer(config.init_tokenizer,
                                                   r_disc)
  elif mode == "hybrid_decoder":
    raise ConfigError("mode 'hybrid_decoder' fine-tunes an existing "
                      "tokenizer: set init_tokenizer to its folder")
  else:
    tc = TokenizerConfig(**dict(config.model))
    loaded = official_tokenizer.init_variables(tc, r_init)
  model, disc = HybridTokenizer(tc), PatchDiscriminator()
  weights = LossWeights(**dict(config.loss))
  if weights.disc > 0 and config.data.image_size < 32:
    raise ConfigError(f"image_size {config.data.image_size} is too small for "
                      "the PatchGAN (its 5 convs need >= 32 px); use larger "
                      "images or set loss.disc = 0")
  lpips, _ = make_lpips(config.get("lpips_weights") or None)
  opt = config.optimizer
  steps = config.train.total_steps
  tx = optax.multi_transform({"train": make_optimizer(opt, steps),
                              "freeze": optax.set_to_zero()},
                             functools.partial(_labels, mode=mode))
  # taming's discriminator optimizer: Adam(0.5, 0.9) at the same lr.
  disc_tx = optax.adam(learning_rate_schedule(opt, steps), b1=0.5, b2=0.9)
  pool_size = int(config.get("latent_pool", 4096))
  extra = dict(
      disc_params=loaded["disc"]["params"],
      disc_stats=loaded["disc"]["batch_stats"],
      disc_opt=disc_tx.init(loaded["disc"]["params"]),
      buffers=loaded["vae"]["buffers"],
      pool=jnp.zeros((pool_size, tc.z_channels), jnp.float32),
      pool_ptr=jnp.zeros((), jnp.int32))
  extra = jax.device_put(extra, jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec()))
  state = create_state(lambda _: loaded["vae"]["params"], tx, mesh, rules,
                       r_init, extra=extra)
  p_skip = float(config.get("skip_continuous_prob", tc.skip_continuous_prob))
  step = functools.partial(
      _step, model=model, disc=disc, weights=weights, tx=tx,
      schedule=learning_rate_schedule(opt, steps), ema_decay=opt.ema_decay,
      accum=config.train.grad_accum, disc_tx=disc_tx, p_skip=p_skip,
      restart_every=int(config.get("restart_dead_every", 0)),
      restart_threshold=float(config.get("restart_threshold", 0.03)))
  reconstruct = jax.jit(lambda v, x: model.apply(
      v, x, method=HybridTokenizer.reconstruct))

  def sample(state, frozen, step_no, preview):
    """Rows: inputs, hybrid reconstructions, discrete-only ones (EMA)."""
    del frozen, step_no
    hybrid, discrete = reconstruct(
        {"params": state.ema_params, "buffers": state.extra["buffers"]},
        jnp.asarray(preview))
    rows = np.concatenate([preview, np.asarray(hybrid),
                           np.asarray(discrete)])
    return image_grid((rows + 1) / 2, cols=len(preview))

  def export(state, folder):
    official_tokenizer.save_tokenizer(
        os.path.join(folder, "tokenizer"), tc, jax.device_get({
            "vae": {"params": state.ema_params,
                    "buffers": state.extra["buffers"]},
            "disc": {"params": state.extra["disc_params"],
                     "batch_stats": state.extra["disc_stats"]}}))

  # Conv nets have no simple closed form: the trainer takes the FLOPs of
  # the compiled step from XLA's cost analysis instead (None here).
  return Stage(name="tokenizer", state=state, step=step,
               frozen=jax.device_put({"lpips": lpips},
                                     sharding.replicated(mesh)),
               sample=sample, export=export,
               flops_per_example=None,
               tokens_per_example=sum(p * p for p in tc.v_patch_nums))
