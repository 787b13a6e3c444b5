"""The HART stage: transformer + diffusion head on a frozen tokenizer.

Inside the jitted step the frozen tokenizer turns images into the
teacher-forcing inputs (hart_spec.md 2.8), or the quantizer rebuilds them
from a token cache's indices (`data.source=tokens:DIR`,
hart_jax/data/token_cache.py). The condition is the class label
(class-conditional configs) or captions through a frozen text encoder
(hart_jax/text/encoders.py: run in the step, or read from a feature cache).
"""

import functools
import logging
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from hart_jax.errors import ConfigError
from hart_jax import checkpointing
from hart_jax import console
from hart_jax import finetune
from hart_jax import sampling
from hart_jax import sharding
from hart_jax.data import token_cache
from hart_jax.interop import official_tokenizer, official_transformer
from hart_jax.models.hart import training as hart_training
from hart_jax.models.hart.config import HartConfig, from_config_dict
from hart_jax.models.hart.transformer import HartTransformer
from hart_jax.models.tokenizer import HybridTokenizer
from hart_jax.optimizer import learning_rate_schedule, make_optimizer
from hart_jax.stages.common import Stage, create_state, image_grid
from hart_jax.steps import apply_update
from hart_jax.text.encoders import TextEncoder, make_text_encoder


def condition(config: HartConfig, batch: dict,
              encoder: Optional[TextEncoder], text_params):
  """(context, mask, position ids) of a batch: class labels, or the frozen
  text encoder's output (it runs here, inside the step)."""
  if config.num_classes:
    b = batch["label"].shape[0]
    return (batch["label"].astype(jnp.int32), jnp.ones((b, 1), bool),
            jnp.zeros((b, 1), jnp.int32))
  context, mask, pos = encoder.encode(text_params, batch)
  return jax.lax.stop_gradient(context), mask, pos


def teacher_forcing(c: HartConfig, batch: dict, tokenizer, tok_vars):
  """indices, var_input and frest_before_last: from the images through
  the frozen tokenizer, or from a token cache's indices and latent (the
  quantizer rebuilds the teacher-forcing input exactly as it would)."""
  if "tokens" not in batch:
    return tokenizer.apply(tok_vars, batch["image"], c.patch_nums,
                           method=HybridTokenizer.tokenize)
  indices = token_cache.split_scales(batch["tokens"], c.patch_nums)
  var_input = tokenizer.apply(
      tok_vars, indices, c.patch_nums,
      method=lambda m, i, p: m.quantize.teacher_forcing_input(i, p))
  return dict(indices=indices, var_input=var_input,
              frest_before_last=batch["frest"].astype(jnp.float32))


def loss_fn(params, batch, rng, *, model, tokenizer, tok_vars, text_params,
            encoder, n_kept):
  c = model.config
  tok = jax.lax.stop_gradient(teacher_forcing(c, batch, tokenizer,
                                              tok_vars))
  context, mask, pos = condition(c, batch, encoder, text_params)
  r_keep, r_loss = jax.random.split(rng)
  n_last = c.patch_nums[-1] ** 2
  keep = None
  if n_kept < n_last:
    keep = hart_training.sample_keep(r_keep, context.shape[0], n_last,
                                     n_kept)
  hart_batch = dict(context=context, context_mask=mask,
                    context_position_ids=pos, var_input=tok["var_input"],
                    indices=tok["indices"],
                    frest_before_last=tok["frest_before_last"])
  codebook = tok_vars["params"]["quantize"]["embedding"]
  loss, m = hart_training.hart_losses(model, params, hart_batch, codebook,
                                      r_loss, keep=keep,
                                      deterministic=False)
  keys = ["ce", "diff_loss", "cond_dropped"] + [
      k for k in m if k.startswith("acc_scale")]
  return loss, {k: m[k] for k in keys}


def flops_per_example(c: HartConfig, n_params: int, n_kept: int) -> float:
  """6 * params * tokens for the matmuls + the attention scores (x3 for
  forward and backward), per example; the diffusion head's rows count
  batch_mul times."""
  tokens = c.seq_len - c.patch_nums[-1] ** 2 + n_kept
  attn = 2 * 2 * c.depth * tokens * tokens * c.embed_dim
  diff_params = (c.diff_width * (c.latent_channels + c.embed_dim + 256)
                 + c.diff_depth * 5 * c.diff_width ** 2)
  return (6.0 * (n_params - diff_params) * tokens + 3.0 * attn
          + 6.0 * diff_params * n_kept * c.diffusion_batch_mul)


def build(config, mesh, rules, rng) -> Stage:
  """State, jitted-able step and sampler for the HART stage."""
  c = from_config_dict(config.model)
  model = HartTransformer(c)
  r_init = jax.random.split(rng)[1]
  r_text = jax.random.fold_in(rng, 1)
  tok_config, tok_all = official_tokenizer.frozen_tokenizer_variables(config)
  tok_vars = tok_all["vae"]
  if tok_config.vocab_size != c.vocab_size:
    raise ConfigError(f"tokenizer vocab {tok_config.vocab_size} != model "
                      f"vocab_size {c.vocab_size}")
  tokenizer = HybridTokenizer(tok_config)
  if config.data.source.startswith("tokens:"):
    where = config.data.source[len("tokens:"):]
    token_cache.check_compatible(
        token_cache.read_meta(where), c.patch_nums, c.latent_channels,
        token_cache.tokenizer_fingerprint(tok_vars), where)
  encoder = None
  if not c.num_classes:
    encoder = make_text_encoder(config.text_encoder, c.context_dim,
                                c.context_token)
  tx = make_optimizer(config.optimizer, config.train.total_steps)
  # A partial fine-tune (frozen parts, LoRA) trains a tree without the
  # frozen weights: no gradients, moments or EMA for them.
  partition = finetune.partition_for(config, c)
  state = create_state(lambda r: official_transformer.init_boxed(c, r), tx,
                       mesh, rules, r_init,
                       split=partition.split if partition else None)
  count = lambda tree: sum(int(np.prod(x.shape))
                           for x in jax.tree.leaves(tree))
  # The model's size (for FLOPs): a partial run's state holds less.
  n_params = count(official_transformer.abstract_params(c) if partition
                   else state.params)
  if partition is not None and jax.process_index() == 0:
    _, opt_bytes = finetune.tree_bytes(state.opt_state)
    console.say(f"fine-tuning {partition.spec.describe()}: "
                f"{count(state.params) / 1e6:.2f}M of {n_params / 1e6:.2f}M "
                f"params train; optimizer state {opt_bytes / 2**20:.1f} MiB "
                f"(full training: {8 * n_params / 2**20:.1f} MiB)")
  n_last = c.patch_nums[-1] ** 2
  n_kept = hart_training.draw_num_kept(np.random.default_rng(
      config.seed), n_last, int(config.train.get("keep_bucket", n_last)))
  if config.train.get("keep_tokens"):
    n_kept = int(config.train.keep_tokens)
  step = functools.partial(
      _step, tx=tx, schedule=learning_rate_schedule(
          config.optimizer, config.train.total_steps),
      ema_decay=config.optimizer.ema_decay, accum=config.train.grad_accum,
      loss=functools.partial(loss_fn, model=model, tokenizer=tokenizer,
                             encoder=encoder, n_kept=n_kept),
      partition=partition)
  sampler = sampling.make_sampler(
      c, sampling.SamplingConfig(cfg=config.sample.cfg,
                                 top_k=config.sample.get("top_k") or None),
      tokenizer)
  sample_inputs, cols = _sample_inputs(config, c, encoder)

  def sample(state, frozen, step_no, preview):
    del preview
    if sample_inputs is None:
      return None
    context, mask, pos = sample_inputs(frozen)
    imgs = sampler(model_params(state, ema=True), frozen["tokenizer"],
                   context, mask, pos,
                   jax.random.key(config.seed + int(step_no)))
    return image_grid(np.asarray(jax.device_get(imgs)), cols=cols)

  host_inputs = None
  if encoder is not None:
    host_inputs = lambda batch: dict(batch, **encoder.host_inputs(
        [str(x) for x in batch["caption"]]))

  def model_params(state, ema: bool):
    """The model's params (a partial fine-tune's trained and frozen parts
    merged, LoRA folded in)."""
    trained = state.ema_params if ema else state.params
    if partition is None:
      return trained
    return partition.merge(trained, state.extra["frozen"])

  def init_from(state, path):
    """Another run's or an official folder's weights; a partial run splits
    them into its trained and frozen parts and keeps its fresh adapters."""
    params, src_step = checkpointing.load_params_from(
        path, official_transformer.abstract_params(c))
    if partition is None:
      return checkpointing.put_params(state, params, params), src_step
    # Host arrays placed like the state's; the fresh adapters stay as they
    # are (a merged model starts equal to the loaded one: b = 0).
    trained, frozen = partition.split(params)
    put = lambda tree, like: jax.tree.map(
        lambda v, ref: jax.device_put(v, ref.sharding), tree, like)
    new_params, new_ema = dict(state.params), dict(state.ema_params)
    if "params" in trained:
      new_params["params"] = put(trained["params"], state.params["params"])
      new_ema["params"] = put(trained["params"], state.ema_params["params"])
    return state.replace(params=new_params, ema_params=new_ema, extra=dict(
        state.extra, frozen=put(frozen, state.extra["frozen"]))), src_step

  def export(state, folder):
    official_transformer.save_transformer(
        os.path.join(folder, "llm"), c,
        jax.device_get(model_params(state, ema=False)),
        jax.device_get(model_params(state, ema=True)))
    # The tokenizer as it was read (its discriminator included).
    official_tokenizer.save_tokenizer(os.path.join(folder, "tokenizer"),
                                      tok_config, jax.device_get(tok_all))

  frozen = {"tokenizer": tok_vars,
            "text": encoder.init_params(r_text) if encoder else None}
  return Stage(name="hart", state=state, step=step,
               frozen=jax.device_put(frozen, sharding.replicated(mesh)),
               sample=sample, export=export,
               flops_per_example=flops_per_example(c, n_params, n_kept),
               tokens_per_example=c.seq_len - n_last + n_kept,
               host_inputs=host_inputs, init_from=init_from)


def _sample_inputs(config, c: HartConfig, encoder):
  """(frozen -> sampler condition inputs, grid columns), or (None, 0) for
  a text model without `sample.prompts`."""
  n = config.sample.get("num_images", 16)
  if c.num_classes:
    labels = jnp.asarray(np.arange(n) % c.num_classes)
    cols = c.num_classes if c.num_classes <= 10 else 8
    return (lambda frozen: (labels, None, None)), cols
  prompts = list(config.sample.get("prompts") or [])
  if not prompts:
    logging.info("no sample.prompts configured: no sample grids")
    return None, 0
  # Each prompt fills a column; rows repeat it with other seeds' draws.
  rows = max(n // len(prompts), 1)
  host = jax.tree.map(jnp.asarray, encoder.host_inputs(prompts * rows))
  encode = jax.jit(encoder.encode)
  return (lambda frozen: encode(frozen["text"], host)), len(prompts)


def _step(state, batch, frozen, *, loss, tx, schedule, ema_decay, accum,
          partition=None):
  fn = functools.partial(loss, tok_vars=frozen["tokenizer"],
                         text_params=frozen["text"])
  if partition is not None:
    # The frozen weights enter as constants: only the trained tree gets
    # gradients, moments and an EMA.
    base, inner = state.extra["frozen"], fn
    fn = lambda p, b, r: inner(partition.merge(p, base), b, r)
  return apply_update(state, fn, batch, tx, schedule, ema_decay, accum)
