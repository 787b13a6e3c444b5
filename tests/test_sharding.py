"""The mesh builder and the logical-axis -> mesh sharding of params."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from hart_jax import sharding


def _boxed(shape, names):
  return nn.LogicallyPartitioned(jax.ShapeDtypeStruct(shape, jnp.float32),
                                 names)


def test_mesh_fills_the_minus_one_axis_and_rejects_bad_sizes():
  mesh = sharding.make_mesh(dict(data=2, fsdp=-1))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
  with pytest.raises(ValueError, match="unknown mesh axes"):
    sharding.make_mesh(dict(model=2))
  with pytest.raises(ValueError, match="at most one mesh axis may be -1"):
    sharding.make_mesh(dict(data=-1, fsdp=-1))
  with pytest.raises(ValueError, match="do not divide"):
    sharding.make_mesh(dict(data=3, fsdp=-1))


def test_indivisible_dims_fall_back_to_replication():
  mesh = sharding.make_mesh(dict(data=1, fsdp=8, tensor=1))
  tree = {"wide": _boxed((1024, 64), ("embed", "mlp")),
          "narrow": _boxed((12, 64), ("embed", "mlp")),
          "stacked": _boxed((3, 1024, 64), ("layers", "embed", "mlp"))}
  got = sharding.param_shardings(tree, mesh)
  # (a size-1 tensor axis divides everything and stays in the spec)
  assert got["wide"].spec == P("fsdp", "tensor")
  assert got["narrow"].spec == P(None, "tensor")  # 12 rows over 8 devices
  assert got["stacked"].spec == P(None, "fsdp", "tensor")
  # Every sharding is usable: an init that honours them compiles and runs.
  jax.jit(lambda: jnp.zeros((12, 64)), out_shardings=got["narrow"])()


def test_the_rule_table_covers_every_model_axis():
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from hart_jax.interop import official_transformer as otr  # pylint: disable=g-import-not-at-top
  from hart_jax.models.hart.config import from_config_dict  # pylint: disable=g-import-not-at-top
  config = from_config_dict(tiny.get_config().model)
  for scan in (False, True):
    boxed = jax.eval_shape(lambda s=scan: otr.init_boxed(
        config.replace(scan_layers=s), jax.random.key(0)))
    assert sharding.check_rules_cover(boxed) == []
