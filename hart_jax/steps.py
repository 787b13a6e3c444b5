"""Pure train steps: (state, batch, frozen) -> (state, metrics). No I/O.

Shared mechanics live in `apply_update`: gradient accumulation, the
non-finite guard (a NaN/Inf loss or gradient skips the update and is
counted), the EMA, and the step/rng bookkeeping. Stage-specific losses are
passed in as functions of (params, microbatch, rng).
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from hart_jax.optimizer import ema_update
from hart_jax.train_state import TrainState

LossFn = Callable[[Any, dict, jax.Array], tuple[jax.Array, dict]]


def _split_micro(batch: dict, accum: int, index: int) -> dict:
  def take(x):
    if not hasattr(x, "shape") or not x.shape:
      return x
    size = x.shape[0] // accum
    return jax.lax.dynamic_slice_in_dim(x, index * size, size, axis=0)
  return jax.tree.map(take, batch)


def accumulate_gradients(loss_fn: LossFn, params, batch: dict,
                         rng: jax.Array, accum: int):
  """Mean loss, metrics and gradients over `accum` equal microbatches."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if accum == 1:
    (loss, metrics), grads = grad_fn(params, batch, rng)
    return loss, metrics, grads

  def body(carry, i):
    (loss, metrics), grads = grad_fn(params, _split_micro(batch, accum, i),
                                     jax.random.fold_in(rng, i))
    total = jax.tree.map(jnp.add, carry, (loss, metrics, grads))
    return total, None

  zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
      lambda: grad_fn(params, _split_micro(batch, accum, 0), rng)))
  zeros = (zeros[0][0], zeros[0][1], zeros[1])
  (loss, metrics, grads), _ = jax.lax.scan(body, zeros, jnp.arange(accum))
  return jax.tree.map(lambda x: x / accum, (loss, metrics, grads))


def apply_update(state: TrainState, loss_fn: LossFn, batch: dict,
                 tx: optax.GradientTransformation, lr_schedule,
                 ema_decay: float, accum: int = 1):
  """One optimizer update of `state.params`, guarded against NaN/Inf."""
  # The state keeps raw key data (checkpointable); typed keys are local.
  rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  loss, metrics, grads = accumulate_gradients(loss_fn, state.params, batch,
                                              rng, accum)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  # The updates are checked too: a finite gradient can still produce a
  # non-finite step (e.g. a bad learning rate).
  # One reduction per tree: a norm is finite iff every element is (and a
  # huge overflowing step is as unusable as a NaN). Per-leaf isfinite
  # checks made XLA's CPU compile of the tokenizer step ~3x slower.
  ok = (jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
        & jnp.isfinite(optax.tree.norm(updates)))
  params = optax.apply_updates(state.params, updates)
  ema = ema_update(state.ema_params, params, ema_decay)
  keep = lambda new, old: jax.tree.map(
      lambda n, o: jnp.where(ok, n, o), new, old)
  streak = jnp.where(ok, 0, state.nonfinite_streak + 1)
  new_state = state.replace(
      step=state.step + 1, params=keep(params, state.params),
      opt_state=keep(opt_state, state.opt_state),
      ema_params=keep(ema, state.ema_params), nonfinite_streak=streak,
      nonfinite_total=state.nonfinite_total + (~ok).astype(jnp.int32))
  metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads),
                 lr=lr_schedule(state.step), skipped=(~ok).astype(
                     jnp.float32), nonfinite_streak=streak)
  return new_state, metrics
