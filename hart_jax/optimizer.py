"""optax chain: warmup + cosine schedule, AdamW with a decay mask, clipping.

Weight decay applies to matrices only: norms, biases, embedding tables,
positional tables and AdaLN tables are excluded (VAR's and most LLM
trainers' convention).
"""

import re

import flax
import jax
import optax

from hart_jax.models.hart import layer_stack

# Parameter paths (joined with '/') that never get weight decay, besides
# every 1-D parameter (biases, norm scales).
_NO_DECAY = re.compile(
    r"(^|/)(embedding|lvl_embed|class_emb|pos_start|pos_1LC|"
    r"scale_shift_table|scale_mul_1H11)$")


def decay_mask(params):
  """True where weight decay applies."""
  flat = flax.traverse_util.flatten_dict(params)
  return flax.traverse_util.unflatten_dict({
      path: (_per_layer_ndim(path, value) >= 2
             and not _NO_DECAY.search("/".join(path)))
      for path, value in flat.items()})


def _per_layer_ndim(path, value) -> int:
  """ndim without the stacked layer axis of scanned blocks, so a scanned
  bias (stacked to 2-D) is still excluded like its unrolled twin."""
  ndim = getattr(value, "ndim", 0)
  return ndim - 1 if layer_stack.SCANNED in path else ndim


def learning_rate_schedule(config, total_steps: int) -> optax.Schedule:
  """Linear warmup to `lr`, then cosine decay to `lr * final_lr_ratio` at
  `total_steps`.

  The length is the run's `train.total_steps`, passed in: the schedule has
  no length of its own, so overriding the step count can never leave it
  decaying over another number of steps.
  """
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.lr,
      warmup_steps=max(int(config.warmup_steps), 1),
      decay_steps=max(int(total_steps), int(config.warmup_steps) + 1),
      end_value=config.lr * config.final_lr_ratio)


def make_optimizer(config, total_steps: int) -> optax.GradientTransformation:
  """Clip by global norm, then AdamW (betas from config, masked decay)."""
  return optax.chain(
      optax.clip_by_global_norm(config.clip_norm),
      optax.adamw(learning_rate_schedule(config, total_steps), b1=config.b1,
                  b2=config.b2, eps=config.eps,
                  weight_decay=config.weight_decay,
                  mask=decay_mask))


def ema_update(ema, params, decay: float):
  """ema <- decay * ema + (1 - decay) * params (fp32)."""
  return jax.tree.map(lambda e, p: e * decay + (1.0 - decay) * p, ema, params)
