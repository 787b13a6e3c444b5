"""One HART train step the way the trainer takes it, for the tests."""

import jax

from hart_jax import sharding
from hart_jax import trainer
from hart_jax.data import source_from_config
from hart_jax.data.pipeline import global_batch, make_dataset
from hart_jax.stages import hart_stage


def first_hart_step(config, mesh=None):
  """(stage, host batch, state, metrics) after the first step of `config`
  on `mesh` (default: one device), on its first data batch."""
  if mesh is None:
    mesh = sharding.make_mesh(dict(data=1), devices=jax.devices()[:1])
  with jax.set_mesh(mesh):
    stage = hart_stage.build(config, mesh, sharding.DEFAULT_RULES,
                             jax.random.key(config.seed))
  source = source_from_config(config.data)
  batch = next(iter(make_dataset(source, image_size=config.data.image_size,
                                 batch_size=config.train.batch_size,
                                 seed=0)))
  if stage.host_inputs:
    batch = stage.host_inputs(batch)
  gb = global_batch(trainer._numeric(batch), mesh,  # pylint: disable=protected-access
                    sharding.batch_sharding(mesh))
  compiled = trainer.compile_step(stage, stage.state, gb, mesh)
  state, metrics = compiled(stage.state, gb, stage.frozen)
  return stage, batch, state, jax.device_get(metrics)
