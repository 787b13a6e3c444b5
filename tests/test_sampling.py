"""Sampler behaviour: determinism, no recompiles, C2I, parameter checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import hart_tiny
from hart_jax import sampling
from hart_jax.interop import official_tokenizer as ot
from hart_jax.interop import official_transformer as otr
from hart_jax.models.hart.config import from_config_dict
from hart_jax.models.tokenizer import HybridTokenizer
from hart_jax.models.tokenizer.config import TokenizerConfig

TOK = TokenizerConfig(ch=32, ch_mult=(1, 1, 1), vocab_size=1024,
                      v_patch_nums=(1, 2, 3, 4))


@pytest.fixture(scope="module")
def setup():
  tok_vars = ot.init_variables(TOK, jax.random.key(0))["vae"]
  return tok_vars


def _inputs(b=2):
  ctx = jax.random.normal(jax.random.key(3), (b, 8, 32))
  mask = jnp.arange(8)[None] < jnp.array([[5], [8]])
  pos = jnp.cumsum(mask, 1) - 1
  return ctx, mask, pos


def test_deterministic_and_compiles_once(setup):
  config = from_config_dict(hart_tiny.get_config().model)
  params = otr.init_params(config, jax.random.key(1))
  traces = []
  s_config = sampling.SamplingConfig(cfg=3.0, top_p=0.9, more_smooth=True)

  @jax.jit
  def run(p, v, c, m, i, key):
    traces.append(1)  # runs only while tracing
    return sampling.generate(config, s_config, p, HybridTokenizer(TOK), v,
                             c, m, i, key)["image"]

  a = run(params, setup, *_inputs(), jax.random.key(7))
  b = run(params, setup, *_inputs(), jax.random.key(7))
  c = run(params, setup, *_inputs(), jax.random.key(8))
  assert len(traces) == 1
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert a.shape == (2, 16, 16, 3)
  assert float(a.min()) >= 0 and float(a.max()) <= 1


def test_class_conditional_sampling(setup):
  config = from_config_dict(hart_tiny.get_config(
      "class_conditional=1").model)
  params = otr.init_params(config, jax.random.key(1))
  out = sampling.generate(config, sampling.SamplingConfig(), params,
                          HybridTokenizer(TOK), setup, jnp.array([3, 7]),
                          None, None, jax.random.key(0))
  assert out["image"].shape == (2, 16, 16, 3)
  assert [i.shape for i in out["indices"]] == [(2, 1), (2, 4), (2, 9),
                                               (2, 16)]


@pytest.mark.parametrize("kwargs,message", [
    (dict(cfg=-1.0), "cfg must be"), (dict(cfg=float("nan")), "cfg must be"),
    (dict(top_k=0), "top_k must be"), (dict(top_p=1.5), "top_p must be"),
    (dict(diffusion_temperature=-1), "diffusion_temperature")])
def test_invalid_sampling_parameters(kwargs, message):
  with pytest.raises(ValueError, match=message):
    sampling.SamplingConfig(**kwargs)
