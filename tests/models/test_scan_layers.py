"""scan_layers: the scanned blocks compute what the unrolled blocks do.

The reference is the unrolled model (itself checked against the official
outputs in tests/golden); the scanned model gets the same weights stacked.
"""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import hart_tiny
from hart_jax import optimizer
from hart_jax import sampling
from hart_jax.checkpointing import convert_params
from hart_jax.interop import official_tokenizer as ot
from hart_jax.interop import official_transformer as otr
from hart_jax.models.hart import layer_stack
from hart_jax.models.hart.config import from_config_dict
from hart_jax.models.hart.layers import Block
from hart_jax.models.hart.transformer import HartTransformer
from hart_jax.models.tokenizer import HybridTokenizer
from hart_jax.models.tokenizer.config import TokenizerConfig

CONFIG = from_config_dict(hart_tiny.get_config().model).replace(
    depth=3, attention_implementation="xla")
SCANNED = CONFIG.replace(scan_layers=True)


def _batch(b=2):
  rng = np.random.default_rng(0)
  mask = np.arange(8)[None] < np.array([[5], [8]])
  return (jnp.asarray(rng.normal(size=(b, 8, 32)), jnp.float32),
          jnp.asarray(mask), jnp.asarray(np.cumsum(mask, 1) - 1),
          jnp.asarray(rng.normal(size=(b, 29, 32)), jnp.float32))


def test_same_seed_same_weights_in_both_layouts():
  unrolled = otr.init_params(CONFIG, jax.random.key(0))
  scanned = otr.init_params(SCANNED, jax.random.key(0))
  assert set(scanned) == {k for k in unrolled
                          if not k.startswith("blocks_")} | {"blocks"}
  assert scanned["blocks"]["attn"]["qkv_proj"]["kernel"].shape == (
      3, 128, 384)
  restacked = layer_stack.stack_blocks(unrolled)
  jax.tree.map(np.testing.assert_array_equal, scanned, restacked)
  back = layer_stack.unstack_blocks(scanned)
  jax.tree.map(np.testing.assert_array_equal, back, unrolled)


def test_init_boxes_match_what_nn_scan_declares():
  """Stacking the unrolled init's boxes gives the logical axes nn.scan's
  own init would: the sharding of a scanned run does not depend on how its
  params were made."""
  inputs = otr.example_inputs(SCANNED)
  own = jax.eval_shape(lambda: HartTransformer(SCANNED).init(
      jax.random.key(0), *inputs, method=HartTransformer.init_all)["params"])
  ours = jax.eval_shape(lambda: otr.init_boxed(SCANNED, jax.random.key(0)))
  assert nn.get_partition_spec(own) == nn.get_partition_spec(ours)
  spec = nn.get_partition_spec(ours)["blocks"]["attn"]["qkv_proj"]["kernel"]
  assert tuple(spec) == ("layers", "embed", "qkv")


@pytest.mark.parametrize("remat", ["none", "full"])
def test_forward_and_gradients_equal_unrolled(remat):
  params = otr.init_params(CONFIG, jax.random.key(0))
  stacked = layer_stack.stack_blocks(params)
  batch = _batch()

  def loss(config, p):
    out = HartTransformer(config).apply({"params": p}, *batch)
    return jnp.sum(out["logits"] ** 2) * 1e-3, out["logits"]

  (l_ref, logits_ref), g_ref = jax.value_and_grad(
      lambda p: loss(CONFIG, p), has_aux=True)(params)
  (l_scan, logits_scan), g_scan = jax.value_and_grad(
      lambda p: loss(SCANNED.replace(remat=remat), p), has_aux=True)(stacked)
  np.testing.assert_allclose(logits_scan, logits_ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(l_scan, l_ref, rtol=1e-6)
  flat_ref = flax.traverse_util.flatten_dict(layer_stack.stack_blocks(
      jax.device_get(g_ref)))
  flat_scan = flax.traverse_util.flatten_dict(g_scan)
  assert set(flat_ref) == set(flat_scan)
  for path, want in flat_ref.items():
    np.testing.assert_allclose(flat_scan[path], want, rtol=1e-4, atol=1e-7,
                               err_msg="/".join(path))
  # Every layer received gradient: the scan did not reuse one layer.
  qkv = np.asarray(flat_scan[("blocks", "attn", "qkv_proj", "kernel")])
  assert all(np.abs(qkv[i]).sum() > 0 for i in range(3))


def test_sampling_through_stacked_kv_caches_equals_unrolled():
  tok = TokenizerConfig(ch=32, ch_mult=(1, 1, 1), vocab_size=1024,
                        v_patch_nums=(1, 2, 3, 4))
  tok_vars = ot.init_variables(tok, jax.random.key(0))["vae"]
  params = otr.init_params(CONFIG, jax.random.key(1))
  ctx, mask, pos, _ = _batch()
  s_config = sampling.SamplingConfig(cfg=3.0, top_k=50)
  outs = [sampling.generate(c, s_config, p, HybridTokenizer(tok), tok_vars,
                            ctx, mask, pos, jax.random.key(5))
          for c, p in ((CONFIG, params),
                       (SCANNED, layer_stack.stack_blocks(params)))]
  for a, b in zip(outs[0]["indices"], outs[1]["indices"]):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(outs[1]["image"], outs[0]["image"], atol=1e-5)


def test_traced_drop_path_rate_keeps_the_expected_fraction():
  """Under nn.scan each layer's drop-path rate is traced: rows are kept
  with probability 1 - rate and rescaled by 1 / (1 - rate)."""
  x = jnp.ones((20000, 1, 4))
  # A jax scalar, not a Python float: the path nn.scan takes.
  got = np.asarray(Block(CONFIG, 0.0, jnp.float32).apply(
      {}, x, False, jnp.float32(0.25), method=Block._drop_path,  # pylint: disable=protected-access
      rngs={"dropout": jax.random.key(0)}))
  kept = got[:, 0, 0] > 0
  assert abs(kept.mean() - 0.75) < 0.01
  np.testing.assert_allclose(got[kept], 1 / 0.75, rtol=1e-6)


def test_scanned_training_forward_with_drop_path_runs():
  config = SCANNED.replace(drop_path_rate=0.5)
  params = otr.init_params(config, jax.random.key(0))
  model = HartTransformer(config)
  train = model.apply({"params": params}, *_batch(), deterministic=False,
                      rngs={"dropout": jax.random.key(1)})["logits"]
  ev = model.apply({"params": params}, *_batch())["logits"]
  assert np.all(np.isfinite(train))
  assert not np.allclose(train, ev)


def test_decay_mask_is_layout_independent():
  unrolled = otr.init_params(CONFIG, jax.random.key(0))
  scanned = layer_stack.stack_blocks(unrolled)
  mask_u = optimizer.decay_mask(unrolled)
  mask_s = optimizer.decay_mask(scanned)
  assert mask_s["blocks"]["attn"]["q_bias"] is False
  assert mask_s["blocks"]["attn"]["qkv_proj"]["kernel"] is True
  assert mask_s["blocks"] == mask_u["blocks_0"]


def test_interop_round_trip_through_the_scanned_layout():
  params = otr.init_params(CONFIG, jax.random.key(0))
  state = otr.export_state_dict(CONFIG, params)
  scanned = otr.import_state_dict(SCANNED, state)
  assert otr.export_state_dict(SCANNED, scanned).keys() == state.keys()
  for key, value in otr.export_state_dict(SCANNED, scanned).items():
    np.testing.assert_array_equal(value, state[key], err_msg=key)


def test_init_from_converts_between_layouts():
  unrolled = otr.init_params(CONFIG, jax.random.key(0))
  target = otr.abstract_params(SCANNED)
  wrapped = convert_params({"model": unrolled}, {"model": target})
  jax.tree.map(np.testing.assert_array_equal, wrapped["model"],
               layer_stack.stack_blocks(unrolled))
  back = convert_params(wrapped, {"model": otr.abstract_params(CONFIG)})
  jax.tree.map(np.testing.assert_array_equal, back["model"], unrolled)


def test_stacking_rejects_gaps_in_block_numbers():
  params = otr.init_params(CONFIG, jax.random.key(0))
  del params["blocks_1"]
  with pytest.raises(ValueError, match="not numbered"):
    layer_stack.stack_blocks(params)
