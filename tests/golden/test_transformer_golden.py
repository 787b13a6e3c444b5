"""Parity of the transformer with the official HARTForT2I (golden vectors).

Models A (released flags), B (per-block AdaLN, learned level table) and
A_pn6 (A's weights on a 5-scale schedule whose last scale really drops
tokens). Indices exactly; arrays to 1e-4 of scale (fp32).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hart_jax.interop import official_transformer
from hart_jax.interop.state_dict_io import read_safetensors
from hart_jax.models.hart import rope
from hart_jax.models.hart.training import hart_losses
from hart_jax.models.hart.transformer import HartTransformer
from tests.golden import transformer_fixtures as fx
from tests.helpers import assert_close_scaled


def _batch(g):
  k = len([n for n in g if n.startswith("idx_s")])
  return dict(context=jnp.asarray(g["context"]),
              context_mask=jnp.asarray(g["context_mask"]),
              context_position_ids=jnp.asarray(g["context_position_ids"]),
              var_input=jnp.asarray(g["x_BLCv_wo_first_l"]),
              indices=[jnp.asarray(g[f"idx_s{i}"]) for i in range(k)],
              frest_before_last=jnp.asarray(g["frest_before_last"]))


@pytest.mark.parametrize(
    "name", [pytest.param("A", marks=pytest.mark.smoke), "B", "A_pn6"])
def test_teacher_forced_forward_and_losses(golden_dir, name):
  config, params = fx.model(golden_dir, name)
  g = fx.arrays(golden_dir, name, "train_forward.npz")
  meta = json.loads((golden_dir / "transformer_tiny" / name /
                     "meta.json").read_text())["train_forward"]
  # The goldens pinned dropout off and the diffusion index to the ground
  # truth (the official fallback); hart_jax has switches for both.
  config = config.replace(cond_drop_rate=-np.inf,
                          diffusion_target_index="ground_truth")
  model = HartTransformer(config)
  keep = jnp.asarray(g["kept_last_scale_positions"])
  assert keep.shape[1] == meta["kept_last_scale_tokens"]
  _, tok_vars = fx.tokenizer(golden_dir)
  codebook = tok_vars["vae"]["params"]["quantize"]["embedding"]
  loss_fn = jax.jit(lambda p, b, k, n: hart_losses(
      model, p, b, codebook, jax.random.key(0), keep=k,
      diffusion_noise=n))
  _, m = loss_fn(params, _batch(g), keep,
                 (jnp.asarray(g["diff_t"]), jnp.asarray(g["diff_noise"])))
  assert_close_scaled(m["logits"], g["logits"], name="logits")
  assert_close_scaled(m["diff_cond"].reshape(g["diff_cond"].shape),
                      g["diff_cond"], name="diff_cond")
  assert_close_scaled(m["diff_target"].reshape(g["diff_target"].shape),
                      g["diff_target"], name="diff_target")
  for key in ("mse", "vb", "loss"):
    assert_close_scaled(m["diff_rows"][key], g[f"diff_row_{key}"],
                        name=f"diff_row_{key}")
  np.testing.assert_allclose(float(m["diff_loss"]), meta["diff_loss"],
                             rtol=1e-4)
  assert np.isfinite(float(m["ce"]))


@pytest.mark.parametrize("name", ["A", "B"])
def test_block_inputs_and_outputs(golden_dir, name):
  config, params = fx.model(golden_dir, name)
  g = fx.arrays(golden_dir, name, "train_forward.npz")
  model = HartTransformer(config)

  def blocks(m, ctx, mask, pos, var, keep):
    out = m(ctx, mask, pos, var, keep)
    return out["hidden"]

  b = _batch(g)
  hidden, state = model.apply(
      {"params": params}, b["context"], b["context_mask"],
      b["context_position_ids"], b["var_input"],
      jnp.asarray(g["kept_last_scale_positions"]),
      method=blocks, capture_intermediates=lambda mdl, _: mdl.name and
      mdl.name.startswith("blocks_"), mutable=["intermediates"])
  inter = state["intermediates"]
  assert_close_scaled(inter["blocks_0"]["__call__"][0][0],
                      g["block0_out"], name="block0_out")
  assert_close_scaled(hidden, g["block1_out"], name="block1_out")


@pytest.mark.parametrize("name", ["A", "A_pn6"])
def test_rope_tables_and_rotation(golden_dir, name):
  config, _ = fx.model(golden_dir, name)
  g = fx.arrays(golden_dir, name, "train_forward.npz")
  keep = jnp.asarray(g["kept_last_scale_positions"])
  head = sum(pn * pn for pn in config.patch_nums[1:-1])
  keep_img = jnp.concatenate([jnp.broadcast_to(jnp.arange(head), (2, head)),
                              keep + head], 1)
  pos_ids = jnp.asarray(g["context_position_ids"])
  cos_c, sin_c = rope.tables_1d(pos_ids, 64)
  cos_i, sin_i = rope.tables_2d(rope.image_positions(
      config.patch_nums, pos_ids[:, -1], keep_img), 64)
  cos = jnp.concatenate([cos_c, cos_i], 1)
  sin = jnp.concatenate([sin_c, sin_i], 1)
  np.testing.assert_allclose(cos, g["rope_cos"], atol=2e-6)
  np.testing.assert_allclose(sin, g["rope_sin"], atol=2e-6)
  q_rot = rope.rotate(jnp.asarray(g["rope_q_in"]), cos, sin)
  assert_close_scaled(q_rot, g["rope_q_out"], rtol=1e-5, name="q_rot")


def test_rope_npz_tables(golden_dir):
  g = dict(np.load(golden_dir / "transformer_tiny" / "rope.npz"))
  np.testing.assert_array_equal(rope.inv_freq(64, 4), g["inv_freq_2d"])
  np.testing.assert_array_equal(rope.inv_freq(64, 2), g["inv_freq_1d"])
  for name, sched in [("tiny", (1, 2, 3, 4)),
                      ("256", (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)),
                      ("512", (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)),
                      ("1024", (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48,
                                64))]:
    np.testing.assert_array_equal(rope.scale_grid(sched[1:], sched[-1]),
                                  g[f"grid_{name}"])
  pos = jnp.asarray(g["train_tiny_context_position_ids"])
  cos_c, sin_c = rope.tables_1d(pos, 64)
  img = rope.image_positions((1, 2, 3, 4), pos[:, -1])
  np.testing.assert_allclose(img, g["train_tiny_image_positions"], atol=0)
  cos_i, sin_i = rope.tables_2d(img, 64)
  cos = jnp.concatenate([cos_c, cos_i], 1)
  sin = jnp.concatenate([sin_c, sin_i], 1)
  np.testing.assert_allclose(cos, g["train_tiny_cos"], atol=2e-6)
  for t in ("q", "k"):
    assert_close_scaled(rope.rotate(jnp.asarray(g[f"train_tiny_{t}"]), cos,
                                    sin), g[f"train_tiny_{t}_rot"],
                        rtol=1e-5, name=t)
  for k in (1, 2, 3):
    c, s = rope.tables_2d(jnp.asarray(g[f"step{k}_positions"]), 64)
    assert_close_scaled(rope.rotate(jnp.asarray(g[f"step{k}_q"]), c, s),
                        g[f"step{k}_q_rot"], rtol=1e-5, name=f"step{k}")


@pytest.mark.parametrize("name", ["A", "B"])
def test_export_equals_the_official_state_dict(golden_dir, name):
  config, params = fx.model(golden_dir, name)
  state = official_transformer.export_state_dict(config, params)
  ref = read_safetensors(str(golden_dir / "transformer_tiny" / name /
                             "model.safetensors"))
  assert set(state) == set(ref), (sorted(set(ref) - set(state))[:5],
                                  sorted(set(state) - set(ref))[:5])
  for k, v in ref.items():
    assert state[k].dtype == v.dtype, k
    np.testing.assert_array_equal(state[k], v, err_msg=k)
