"""Shapes, parameter counts and key sets of configs the goldens don't cover."""

import flax
import jax
import numpy as np
import pytest

from configs import hart_0p7b_1024, hart_c2i, hart_tiny
from hart_jax.interop import official_transformer as otr
from hart_jax.models.hart.config import from_config_dict


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_released_param_count():
  """hart_spec.md 2.1: 732,399,168 = 695.81M AR + 36.59M diffusion."""
  config = from_config_dict(hart_0p7b_1024.model_config(1024))
  shapes = otr.abstract_params(config)
  total, diff = _count(shapes), _count(shapes["diffloss"])
  assert total == 732_399_168
  assert round(diff / 1e6, 2) == 36.59
  assert round((total - diff) / 1e6, 2) == 695.81
  keys = {otr.param_key(p) for p in flax.traverse_util.flatten_dict(shapes)}
  for k in ("blocks.23.ffn.gate_proj.weight", "lvl_embed.mlp.0.weight",
            "context_norm.weight", "head_nm.ada_lin.1.weight",
            "decoder_norm.weight", "diffloss.net.res_blocks.5.in_ln.bias"):
    assert k in keys, k
  assert "blocks.0.ada_lin.1.weight" not in keys
  bufs = otr.buffers(config)
  assert bufs["lvl_1L"].shape == (1, 9750)
  assert bufs["attn_bias_for_masking"].shape == (1, 1, 9750, 9750)


@pytest.mark.parametrize("res,seq", [(256, 979), (512, 2539), (1024, 9750)])
def test_sequence_lengths(res, seq):
  config = from_config_dict(hart_0p7b_1024.get_config(f"res={res}").model)
  assert config.seq_len == seq


@pytest.mark.parametrize("size,width", [("d20", 1280), ("d24", 1536),
                                        ("d30", 1920)])
def test_class_conditional_sizes(size, width):
  config = from_config_dict(hart_c2i.get_config(f"size={size}").model)
  shapes = otr.abstract_params(config)
  assert shapes["class_emb"].shape == (1001, width)
  assert shapes["blocks_0"]["ada_lin_1"]["kernel"].shape == (width,
                                                             6 * width)
  assert len([k for k in shapes if k.startswith("blocks_")]) == int(size[1:])


@pytest.mark.parametrize("changes,present,absent", [
    (dict(attn_type="gpt2", mlp_type="gpt2"),
     ["blocks.0.attn.mat_qkv.weight", "blocks.0.ffn.fc1.bias", "pos_start",
      "pos_1LC", "decoder_norm.bias"],
     ["blocks.0.ln_wo_grad.weight", "blocks.0.attn.qkv_proj.weight"]),
    (dict(disable_aln=True, shared_aln=True),
     ["blocks.1.scale_shift_table"], ["blocks.1.ada_lin.1.weight"]),
    (dict(disable_aln=False), ["blocks.1.ada_lin.1.bias"], []),
    (dict(attn_l2_norm=True), ["blocks.0.attn.scale_mul_1H11"], []),
    (dict(use_timestep_embed=False), ["lvl_embed.weight"],
     ["lvl_embed.mlp.0.weight"]),
    (dict(use_context_norm=False), [], ["context_norm.weight"]),
])
def test_flag_key_sets(changes, present, absent):
  config = from_config_dict(hart_tiny.get_config().model).replace(**changes)
  shapes = otr.abstract_params(config)
  keys = {otr.param_key(p) for p in flax.traverse_util.flatten_dict(shapes)}
  for k in present:
    assert k in keys, k
  for k in absent:
    assert k not in keys, k


def test_unknown_model_key_fails():
  with pytest.raises(ValueError, match=r"unknown transformer config key"):
    from_config_dict(dict(hart_tiny.get_config().model, depht=3))
  with pytest.raises(ValueError, match="not divisible by num_heads"):
    from_config_dict(hart_tiny.get_config().model).replace(num_heads=3)


def test_every_parameter_has_logical_axis_names():
  config = from_config_dict(hart_tiny.get_config().model)
  from hart_jax.models.hart.transformer import HartTransformer  # pylint: disable=g-import-not-at-top
  boxed = jax.eval_shape(lambda: HartTransformer(config).init(
      jax.random.key(0), *otr.example_inputs(config),
      method=HartTransformer.init_all))["params"]
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(
      x, flax.linen.Partitioned))
  unnamed = [x for x in leaves if not isinstance(x, flax.linen.Partitioned)]
  assert not unnamed, f"{len(unnamed)} params without logical axis names"
  for box in leaves:
    assert len(box.names) == len(box.value.shape)
