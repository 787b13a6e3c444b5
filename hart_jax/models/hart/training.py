"""HART's training forward (hart_spec.md 2.8): losses from teacher forcing.

Returns the token cross-entropy, the residual diffusion loss and per-scale
accuracy. The official code draws the number of kept last-scale tokens on
the host (truncated normal rate); under jit that number must be static, so
`draw_num_kept` returns it (optionally rounded up to a bucket, to bound the
number of compiled shapes) and `sample_keep` draws which ones in JAX.
"""

import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from hart_jax.models.hart import token_sampling
from hart_jax.models.hart.config import HartConfig
from hart_jax.models.hart.transformer import HartTransformer

MIN_KEPT = 32  # the official rule never keeps fewer last-scale tokens


def draw_num_kept(rng: np.random.Generator, n_last: int,
                  bucket: int = 1) -> int:
  """Kept last-scale tokens: n - min(ceil(n * r), n - 32), r ~ TN[0.5, 1].

  The rate is a truncated normal with mode 1 and sigma 0.25 (mean 0.819);
  at n = 4096 this keeps 32 to 2048 tokens. `bucket` > 1 rounds the count
  up (never above n) so a jitted step sees few distinct shapes.
  """
  rate = scipy.stats.truncnorm.rvs(-2.0, 0.0, loc=1.0, scale=0.25,
                                   random_state=rng)
  masked = min(int(math.ceil(n_last * rate)), n_last - MIN_KEPT)
  kept = n_last - max(masked, 0)
  return min(n_last, -(-kept // bucket) * bucket)


def sample_keep(rng: jax.Array, batch: int, n_last: int,
                n_kept: int) -> jax.Array:
  """Per-sample random subset of n_kept positions, ascending, [B, n_kept]."""
  keys = jax.random.split(rng, batch)
  perms = jax.vmap(lambda k: jax.random.permutation(k, n_last))(keys)
  return jnp.sort(perms[:, n_last - n_kept:], axis=-1)


def drop_condition(rng: jax.Array, context: jax.Array, config: HartConfig):
  """Zeroes dropped samples' context (positions and mask are kept).

  "normal" reproduces the official test `randn < rate` (P ~ 0.54 at 0.1);
  "uniform" drops with probability `rate`. Class labels drop to the null
  class `num_classes`.
  """
  b = context.shape[0]
  if config.cond_drop_mode == "normal":
    drop = jax.random.normal(rng, (b,)) < config.cond_drop_rate
  else:
    drop = jax.random.uniform(rng, (b,)) < config.cond_drop_rate
  if config.num_classes:
    return jnp.where(drop, config.num_classes, context), drop
  return jnp.where(drop[:, None, None], 0.0, context), drop


def targets_and_segments(config: HartConfig, indices, keep):
  """Flat targets [B, L'] and the scale id of each target position."""
  last = indices[-1] if keep is None else jnp.take_along_axis(
      indices[-1], keep, axis=1)
  targets = jnp.concatenate(list(indices[:-1]) + [last], axis=1)
  segments = np.concatenate(
      [np.full(pn * pn, k) for k, pn in enumerate(config.patch_nums[:-1])]
      + [np.full(last.shape[1], config.num_scales - 1)])
  return targets, segments


def hart_losses(model: HartTransformer, params, batch: dict[str, Any],
                codebook: jax.Array, rng: jax.Array,
                keep: Optional[jax.Array] = None, deterministic: bool = True,
                diffusion_noise: Optional[tuple[jax.Array, jax.Array]] = None):
  """Cross-entropy + diffusion loss of one batch.

  Args:
    model: the transformer module.
    params: its params.
    batch: context, context_mask, context_position_ids, var_input
      ([B, L-1, Cv]), indices (list of [B, pn*pn]), frest_before_last
      ([B, P*P, Cv]), from `HybridTokenizer.tokenize` + the text encoder.
    codebook: the tokenizer's codebook [V, Cv] (frozen).
    rng: key for condition dropout, the sampled diffusion index, dropout
      and the diffusion t / noise.
    keep: [B, n_kept] kept last-scale positions (None keeps all).
    deterministic: disables dropout / drop path.
    diffusion_noise: optional explicit (t, noise) for the diffusion loss.

  Returns:
    (loss, metrics dict).
  """
  c = model.config
  r_drop, r_idx, r_model, r_diff = jax.random.split(rng, 4)
  context, dropped = drop_condition(r_drop, batch["context"], c)
  out = model.apply({"params": params}, context, batch["context_mask"],
                    batch["context_position_ids"], batch["var_input"], keep,
                    deterministic, rngs={"dropout": r_model})
  logits = out["logits"]
  targets, segments = targets_and_segments(c, batch["indices"], keep)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  token_nll = -jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
  ce = token_nll.mean()
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  acc = {f"acc_scale{k}": correct[:, segments == k].mean()
         for k in range(c.num_scales)}

  n_kept = targets.shape[1] - (c.image_tokens - c.patch_nums[-1] ** 2)
  gt_last = targets[:, -n_kept:]
  if c.diffusion_target_index == "sampled":
    # The token the model itself would emit, as the official forward does:
    # top-k 600, top-p 0.96, no gradient.
    filtered = token_sampling.filter_top_k_top_p(
        jax.lax.stop_gradient(logits[:, -n_kept:]), 600, 0.96)
    last_idx = token_sampling.draw(r_idx, filtered)
  else:
    last_idx = gt_last
  frest = batch["frest_before_last"]
  if keep is not None:
    frest = jnp.take_along_axis(frest, keep[..., None], axis=1)
  codewords = jnp.take(codebook, last_idx, axis=0)
  z = model.apply({"params": params}, out["hidden"][:, -n_kept:], codewords,
                  method=HartTransformer.diffusion_condition)
  target = (frest - codewords).reshape(-1, frest.shape[-1])
  t, noise = diffusion_noise if diffusion_noise is not None else (None, None)
  rows = model.apply({"params": params}, target, z.reshape(-1, z.shape[-1]),
                     r_diff, t=t, noise=noise,
                     method=lambda m, *a, **k: m.diffloss.loss(*a, **k))
  diff = rows["loss"].mean()
  metrics = dict(loss=ce + diff, ce=ce, diff_loss=diff,
                 cond_dropped=dropped.mean(), **acc)
  return ce + diff, dict(metrics, diff_rows=rows, diff_cond=z,
                         diff_target=target, logits=logits)
