"""Parity with the official tokenizer (../shared/golden/tokenizer_tiny).

The golden weights are imported through the official-folder importer, so
these tests cover the importer, the conv nets, the quantizer and the
exporter together. Indices must match exactly; arrays to 1e-4 of their
scale (the golden README's contract for fp32).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hart_jax.interop import official_tokenizer
from hart_jax.models.tokenizer import HybridTokenizer
from tests.helpers import assert_close_scaled, nchw, nhwc

K = 10


@pytest.fixture(scope="module")
def golden(golden_dir):
  folder = golden_dir / "tokenizer_tiny"
  config, variables = official_tokenizer.load_tokenizer(str(folder))
  ref = dict(np.load(folder / "golden.npz"))
  meta = json.loads((folder / "meta.json").read_text())
  keys = json.loads((folder / "state_dict_keys.json").read_text())
  return config, variables, ref, meta, keys, folder


def _apply(config, variables, method, *args):
  model = HybridTokenizer(config)
  fn = jax.jit(lambda v, *a: model.apply(v, *a, method=method))
  return fn(variables["vae"], *args)


def test_config_is_the_golden_one(golden):
  config = golden[0]
  assert config.ch == 32 and config.ch_mult == (1, 1, 1, 1, 2)
  assert config.v_patch_nums == (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def test_encoder_and_latent(golden):
  config, variables, ref, *_ = golden
  x = jnp.asarray(nhwc(ref["x"]))
  model = HybridTokenizer(config)
  enc = jax.jit(lambda v, x: model.apply(
      v, x, method=lambda m, x: m.encoder(x)))(variables["vae"], x)
  assert_close_scaled(nchw(enc), ref["encoder_out"], name="encoder_out")
  f = _apply(config, variables, HybridTokenizer.encode_latent, x)
  assert_close_scaled(nchw(f), ref["f"], name="f")


def test_encode_indices_exact_and_residuals(golden):
  config, variables, ref, *_ = golden
  tok = _apply(config, variables, HybridTokenizer.tokenize,
               jnp.asarray(nhwc(ref["x"])))
  assert len(tok["indices"]) == K
  for si in range(K):
    np.testing.assert_array_equal(np.asarray(tok["indices"][si]),
                                  ref[f"idx_s{si}"], err_msg=f"scale {si}")
  assert_close_scaled(tok["frest_before_last"], ref["frest_before_last"],
                      name="frest_before_last")
  assert_close_scaled(tok["residual"], ref["residual_continuous"],
                      name="residual_continuous")
  assert_close_scaled(tok["var_input"], ref["var_input"], name="var_input")


def _golden_indices(ref):
  return [jnp.asarray(ref[f"idx_s{si}"]) for si in range(K)]


def test_generation_style_fhat_and_decodes(golden):
  config, variables, ref, *_ = golden
  idx = _golden_indices(ref)
  fhat = _apply(config, variables,
                lambda m, i: m.quantize.indices_to_fhat(i), idx)
  assert_close_scaled(nchw(fhat), ref["fhat_discrete_gen"],
                      name="fhat_discrete_gen")
  decode = lambda f: _apply(config, variables, HybridTokenizer.decode, f)
  assert_close_scaled(nchw(decode(fhat)), ref["recon_discrete_gen"],
                      name="recon_discrete_gen")
  assert_close_scaled(nchw(decode(jnp.asarray(nhwc(ref["f"])))),
                      ref["recon_hybrid"], name="recon_hybrid")
  # discrete + continuous residual rebuilds f (hybrid = lossless latent).
  hybrid = _apply(config, variables,
                  lambda m, i, r: m.quantize.indices_to_fhat(i, r), idx,
                  jnp.asarray(ref["residual_continuous"]))
  assert_close_scaled(nchw(hybrid), ref["f"], name="hybrid fhat == f")


def test_per_scale_autoregressive_inputs(golden):
  config, variables, ref, *_ = golden
  idx = _golden_indices(ref)
  pns = config.v_patch_nums

  def run(m, idx):
    fhat = jnp.zeros((2, pns[-1], pns[-1], config.z_channels))
    maps = []
    for si in range(K - 1):
      fhat, nxt = m.quantize.next_autoregressive_input(
          si, fhat, m.quantize.codewords(idx[si], pns[si]))
      maps.append(nxt)
    return maps

  maps = _apply(config, variables, run, idx)
  for si in range(1, K):
    assert_close_scaled(nchw(maps[si - 1]), ref[f"ar_next_input_s{si}"],
                        name=f"ar_next_input_s{si}")


def test_var_style_fhat_and_image(golden):
  config, variables, ref, *_ = golden
  fhat = _apply(config, variables,
                lambda m, i: m.quantize.indices_to_fhat_var_style(i),
                _golden_indices(ref))
  assert_close_scaled(nchw(fhat), ref["fhat_var_style"],
                      name="fhat_var_style")
  img = _apply(config, variables, HybridTokenizer.fhat_to_img, fhat)
  assert_close_scaled(nchw(img), ref["recon_var_style"],
                      name="recon_var_style")


@pytest.mark.parametrize("case,p_skip", [("continuous", 0.0),
                                         ("discrete", 1.0)])
def test_training_forward(golden, case, p_skip):
  config, variables, ref, meta, *_ = golden
  x = jnp.asarray(nhwc(ref["x"]))
  model = HybridTokenizer(config)
  out = jax.jit(lambda v, x: model.apply(
      v, x, jax.random.key(0), False, p_skip))(variables["vae"], x)
  assert_close_scaled(nchw(out["fhat"]), ref[f"train_{case}_fhat"],
                      name=f"train_{case}_fhat")
  for si in range(K):
    np.testing.assert_array_equal(np.asarray(out["indices"][si]),
                                  ref[f"idx_s{si}"])
  want = meta["train_forward"][case]
  np.testing.assert_allclose(float(out["vq_loss"]), want["vq_loss"],
                             rtol=1e-4)
  np.testing.assert_allclose(float(out["usage_percent"]),
                             want["usages_percent"], rtol=1e-4)
  mse = float(jnp.mean((out["recon"] - x) ** 2))
  np.testing.assert_allclose(mse, want["loss_recon_mse"], rtol=1e-4)
  assert bool(out["used_continuous"]) == (case == "continuous")


def test_export_matches_official_key_set_and_values(golden):
  config, variables, _, _, keys, folder = golden
  state = official_tokenizer.export_state_dict(config, variables)
  assert set(state) == set(keys), (
      f"missing {sorted(set(keys) - set(state))[:5]}, "
      f"extra {sorted(set(state) - set(keys))[:5]}")
  for k, info in keys.items():
    assert list(state[k].shape) == info["shape"], k
    assert str(state[k].dtype) == info["dtype"], k
  from hart_jax.interop import state_dict_io  # pylint: disable=g-import-not-at-top
  stored = state_dict_io.read_safetensors(str(folder / "model.safetensors"))
  assert set(stored) == {k for k, i in keys.items() if i["saved"]}
  for k, v in stored.items():
    np.testing.assert_array_equal(state[k], v, err_msg=k)


def test_second_golden_tokenizer_round_trips(golden_dir):
  """transformer_tiny's tokenizer (ch_mult (1,1,1), V 1024) exports exactly."""
  folder = golden_dir / "transformer_tiny" / "tokenizer"
  config, variables = official_tokenizer.load_tokenizer(str(folder))
  assert config.vocab_size == 1024 and config.v_patch_nums == (1, 2, 3, 4)
  keys = json.loads((folder / "state_dict_keys.json").read_text())
  state = official_tokenizer.export_state_dict(config, variables)
  assert {k: list(v.shape) for k, v in state.items()} == {
      k: i["shape"] for k, i in keys.items()}
