"""Token cache: written once by the CLI, trained on like the images."""

import json
import os
import pathlib
import subprocess
import sys

import flax
import jax
import numpy as np
import pytest

from configs import tiny
from hart_jax import sharding
from hart_jax.data import make_source
from hart_jax.data import token_cache
from hart_jax.stages import hart_stage
from tests.training_helpers import first_hart_step

REPO = pathlib.Path(__file__).resolve().parents[1]
N = 64  # synthetic examples: small, so the cache is written in seconds


def _config(source=None):
  config = tiny.get_config("stage=hart")
  with config.unlocked():
    config.mesh.data = 1
    config.data.source_kwargs.num_examples = N
    if source:
      config.data.source = source
  return config


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("cache") / "tokens"
  env = dict(os.environ, PYTHONPATH=str(REPO))
  subprocess.run([sys.executable, "-m", "hart_jax.cache_tokens",
                  f"--config={REPO / 'configs' / 'tiny.py'}:stage=hart",
                  f"--config.data.source_kwargs.num_examples={N}",
                  f"--out={out}", "--batch_size=24"],
                 check=True, env=env, cwd=REPO, capture_output=True,
                 timeout=300)
  return out


def _first_step(config):
  _, batch, state, metrics = first_hart_step(config)
  return batch, jax.device_get(state.params), metrics


def test_cache_holds_every_example_in_source_order(cache_dir):
  meta = json.loads((cache_dir / "meta.json").read_text())
  assert meta["num_examples"] == N and meta["patch_nums"] == [1, 2, 4, 8]
  source = token_cache.TokenCacheSource(cache_dir)
  images = make_source("synthetic", **dict(_config().data.source_kwargs))
  assert len(source) == N
  for i in (0, N - 1):  # the padded last batch (64 = 2 * 24 + 16) too
    assert source[i]["caption"] == images[i]["caption"]
    assert source[i]["label"] == images[i]["label"]
    assert source[i]["tokens"].shape == (1 + 4 + 16 + 64,)
    assert source[i]["frest"].shape == (64, 32)


def test_training_on_the_cache_equals_training_on_images(cache_dir):
  """Same examples in the same order (same shuffle seed and length): the
  first step's loss and update are those of the in-step tokenizer."""
  batch_i, params_i, m_i = _first_step(_config())
  batch_t, params_t, m_t = _first_step(_config(f"tokens:{cache_dir}"))
  np.testing.assert_array_equal(batch_i["caption"], batch_t["caption"])
  assert "image" not in batch_t
  np.testing.assert_allclose(m_t["loss"], m_i["loss"], rtol=1e-6)
  flat_i = flax.traverse_util.flatten_dict(params_i)
  flat_t = flax.traverse_util.flatten_dict(params_t)
  for key, value in flat_i.items():
    np.testing.assert_allclose(flat_t[key], value, rtol=1e-6, atol=1e-7,
                               err_msg="/".join(key))


def test_a_cache_from_another_tokenizer_is_refused(cache_dir, tmp_path):
  other = tmp_path / "other"
  other.mkdir()
  meta = json.loads((cache_dir / "meta.json").read_text())
  meta.update(tokenizer_sha256="0" * 64, patch_nums=[1, 2, 3, 4])
  (other / "meta.json").write_text(json.dumps(meta))
  config = _config(f"tokens:{other}")
  mesh = sharding.make_mesh(dict(data=1), devices=jax.devices()[:1])
  with pytest.raises(token_cache.TokenCacheError,
                     match=r"patch_nums \[1, 2, 3, 4\] != model \[1, 2, 4, 8\]"
                     ".*different tokenizer"):
    hart_stage.build(config, mesh, sharding.DEFAULT_RULES,
                     jax.random.key(0))


def test_broken_caches_are_named(cache_dir, tmp_path):
  with pytest.raises(token_cache.TokenCacheError, match="no meta.json"):
    token_cache.TokenCacheSource(tmp_path)
  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / "meta.json").write_text((cache_dir / "meta.json").read_text())
  (broken / "tokens.npy").write_bytes(b"\x93NUMPY garbage")
  with pytest.raises(token_cache.TokenCacheError, match="unreadable"):
    token_cache.TokenCacheSource(broken)[0]
