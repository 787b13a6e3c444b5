"""Pieces both stages use: sharded state creation and the stage protocol."""

import dataclasses
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hart_jax import sharding
from hart_jax.train_state import TrainState


@dataclasses.dataclass
class Stage:
  """What the loop needs from a stage.

  step: pure (state, batch, frozen) -> (state, metrics).
  frozen: arrays the step reads but never changes (e.g. the tokenizer).
  sample: host function (state, frozen, step, preview images) -> uint8
    image grid, or None.
  export: host function (state, folder) writing official weights, or None.
  flops_per_example: analytic training FLOPs per example (for MFU); None
    means: take them from the compiled step's cost analysis.
  """
  name: str
  state: TrainState
  step: Callable[..., Any]
  frozen: Any
  sample: Optional[Callable[..., np.ndarray]]
  export: Optional[Callable[..., None]]
  flops_per_example: Optional[float]
  tokens_per_example: int
  # Host-side batch -> batch with the arrays the step needs from non-numeric
  # fields (a text encoder's tokens from the captions); runs in the loop.
  host_inputs: Optional[Callable[[dict], dict]] = None
  # (state, train.init_from path) -> (state, source step): another run's
  # (or an official folder's) weights in this run's state; None: the
  # params and EMA of another hart_jax run, converted
  # (hart_jax.checkpointing.init_state_from).
  init_from: Optional[Callable[..., Any]] = None


def create_state(init_fn: Callable[[jax.Array], Any],
                 tx: optax.GradientTransformation, mesh, rules,
                 rng: jax.Array, extra=None,
                 split: Optional[Callable[..., Any]] = None) -> TrainState:
  """Params are created already sharded: eval_shape -> specs -> jit(init).

  `init_fn(rng)` returns (possibly logically boxed) params; a full copy of
  the params never sits on one host. With `split` (a partial fine-tune,
  hart_jax/finetune.py: boxed params, rng -> (trained, frozen)) the state's
  params, EMA and optimizer hold the trained tree only, and the frozen one
  goes to `extra["frozen"]`.
  """
  init_rng, state_rng = jax.random.split(rng)
  if split is None:
    abstract = jax.eval_shape(init_fn, init_rng)
    shardings = sharding.param_shardings(abstract, mesh, rules)
    params = jax.jit(lambda r: flax.core.meta.unbox(init_fn(r)),
                     out_shardings=shardings)(init_rng)
  else:
    both = lambda r: split(init_fn(r), jax.random.fold_in(r, 1))
    abstract, abstract_frozen = jax.eval_shape(both, init_rng)
    shardings = sharding.param_shardings(abstract, mesh, rules)
    params, frozen = jax.jit(
        lambda r: flax.core.meta.unbox(both(r)), out_shardings=(
            shardings, sharding.param_shardings(abstract_frozen, mesh,
                                                rules)))(init_rng)
    extra = dict(extra or {}, frozen=frozen)
  opt_state = jax.jit(tx.init)(params)
  # Moments follow the params' shardings; the scalars (step counts) would
  # land on one device, which a jit over the whole mesh rejects.
  rep_all = sharding.replicated(mesh)
  mesh_devices = set(mesh.devices.flat)
  opt_state = jax.tree.map(
      lambda x: x if set(x.sharding.device_set) == mesh_devices
      else jax.device_put(x, rep_all), opt_state)
  ema = jax.jit(lambda p: jax.tree.map(jnp.copy, p),
                out_shardings=shardings)(params)
  rep = sharding.replicated(mesh)
  put = lambda x: jax.device_put(x, rep)
  return TrainState(step=put(jnp.zeros((), jnp.int32)), params=params,
                    opt_state=opt_state, ema_params=ema,
                    rng=put(jax.random.key_data(state_rng)),
                    nonfinite_streak=put(
                        jnp.zeros((), jnp.int32)),
                    nonfinite_total=put(jnp.zeros((), jnp.int32)),
                    extra=extra)


def image_grid(images: np.ndarray, cols: int) -> np.ndarray:
  """[N, H, W, 3] floats in [0, 1] -> one uint8 grid with 2px gutters."""
  # Small images (the demo's 32px) are enlarged 2x so the grid is readable.
  if images.shape[1] < 64:
    images = images.repeat(2, axis=1).repeat(2, axis=2)
  n, h, w, _ = images.shape
  rows = -(-n // cols)
  grid = np.full((rows * (h + 2) + 2, cols * (w + 2) + 2, 3), 255, np.uint8)
  for i, img in enumerate(np.clip(images, 0, 1)):
    r, c = divmod(i, cols)
    grid[2 + r * (h + 2):2 + r * (h + 2) + h,
         2 + c * (w + 2):2 + c * (w + 2) + w] = np.round(img * 255)
  return grid


# Peak dense bf16 FLOP/s per chip, for MFU (device_kind substrings).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12,
              "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12,
              "TPU v5p": 459e12, "TPU v6": 918e12}


def peak_flops_per_device() -> Optional[float]:
  kind = jax.devices()[0].device_kind
  for key, value in PEAK_FLOPS.items():
    if key.lower() in kind.lower():
      return value
  return None
