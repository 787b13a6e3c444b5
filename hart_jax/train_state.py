"""The training state: one pytree that is sharded, donated and checkpointed."""

from typing import Any

import flax
import jax
import optax


class TrainState(flax.struct.PyTreeNode):
  """Everything a step reads and writes.

  `extra` holds stage-specific arrays (the discriminator's params, its
  optimizer state and BatchNorm statistics, the codebook hit EMA), so that
  both stages share one step/checkpoint protocol.
  """
  step: jax.Array
  params: Any
  opt_state: optax.OptState
  ema_params: Any
  rng: jax.Array
  nonfinite_streak: jax.Array   # consecutive skipped updates
  nonfinite_total: jax.Array
  extra: Any = None
