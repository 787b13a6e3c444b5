"""DiffusionHead behaviour beyond the golden vectors: size, quirks, jit."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hart_jax.diffusion import schedule as sched_lib
from hart_jax.interop import official_diffusion
from hart_jax.interop.state_dict_io import CheckpointError
from hart_jax.models.diffusion_head import DiffusionHead, DiffusionHeadConfig

CFG = DiffusionHeadConfig(width=32, depth=2, cond_dim=16, in_channels=8)
HEAD = DiffusionHead(CFG)
B = 3


@jax.jit
def _init(rng):
  return flax.core.meta.unbox(HEAD.init(
      rng, jnp.ones((2, CFG.in_channels)), jnp.array([3, 999]),
      jnp.ones((2, CFG.cond_dim))))


@pytest.fixture(scope="module")
def variables():
  """Random params everywhere: the official init zeroes the output layer
  and every modulation, which would make most checks trivially pass.
  Drawn with numpy: a jitted draw per leaf shape costs seconds to compile.
  """
  gen = np.random.default_rng(1)
  shapes = jax.eval_shape(_init, jax.random.key(0))
  return jax.tree.map(
      lambda l: jnp.asarray(0.1 * gen.standard_normal(l.shape), l.dtype),
      shapes)


def _z(seed=0, rows=2 * B):
  return jax.random.normal(jax.random.key(seed), (rows, CFG.cond_dim))


def _sample(variables, z, s, noise=None, rng=None):
  return HEAD.apply(variables, z, s, rng, noise=noise,
                    method=DiffusionHead.sample)


# Eager sampling dispatches op by op (slow); the checks that need values
# go through one jitted sampler (one compile per noise structure).
_jit_sample = jax.jit(_sample)


def test_full_size_parameter_count_and_official_keys():
  config = DiffusionHeadConfig()  # width 1024, depth 6, cond 1536
  abstract = official_diffusion.abstract_params(config)
  count = sum(int(np.prod(l.shape)) for l in jax.tree.leaves(abstract))
  assert count == 36_585_536  # hart_spec 2.1: 36.59M
  keys = official_diffusion.export_diffusion_params(
      jax.tree.map(lambda l: np.zeros(l.shape, l.dtype), abstract))
  assert keys["diffloss.net.res_blocks.5.adaLN_modulation.1.weight"].shape \
      == (3072, 1024)
  assert keys["diffloss.net.final_layer.linear.weight"].shape == (64, 1024)
  assert keys["diffloss.net.time_embed.mlp.0.weight"].shape == (1024, 256)
  assert "diffloss.net.res_blocks.0.in_ln.weight" in keys
  assert not any("norm_final" in k for k in keys)  # no affine params


def test_fresh_head_follows_official_init():
  params = _init(jax.random.key(0))["params"]["net"]
  assert not np.any(params["final_layer"]["linear"]["kernel"])
  assert not np.any(params["res_blocks_1"]["adaLN_modulation_1"]["kernel"])
  std = np.std(params["time_embed"]["mlp_0"]["kernel"])
  assert 0.015 < std < 0.025


@jax.jit
def _reference_unguided(variables, z_cond, noise):
  """Plain IDDPM loop on the cond rows only, from the pure functions."""
  sched, x = CFG.gen_schedule, noise[0]
  for step, i in enumerate(reversed(range(sched.num_steps))):
    t = jnp.full((len(x),), sched.timestep_map[i])
    out = HEAD.apply(variables, x, t, z_cond)
    x = sched_lib.p_sample(sched, out, x, jnp.full((len(x),), i),
                           noise[step + 1])
  return x * CFG.vae_scale


def test_cfg_scale_one_switches_guidance_off(variables):
  noise = [jax.random.normal(jax.random.key(10 + i), (2 * B, CFG.in_channels))
           for i in range(9)]
  z = _z()
  plain = _reference_unguided(variables, z[:B], [n[:B] for n in noise])
  off = _jit_sample(variables, z, 1.0, noise)
  np.testing.assert_allclose(off, plain, atol=1e-5)
  np.testing.assert_array_equal(_jit_sample(variables, z, 0.0, noise), off)
  # With guidance off the uncond rows are never read ...
  z_other = z.at[B:].set(_z(seed=5, rows=B))
  np.testing.assert_array_equal(_jit_sample(variables, z_other, 1.0, noise),
                                off)
  # ... while a guided scale next to 1 reads them and lands elsewhere.
  near = _jit_sample(variables, z, 1.0 - 1e-3, noise)
  assert np.abs(near - off).max() > 1e-2
  assert np.abs(_jit_sample(variables, z_other, 1.0 - 1e-3, noise)
                - near).max() > 1e-2


def test_sample_with_rng(variables):
  out = _jit_sample(variables, _z(), 3.0, rng=jax.random.key(2))
  assert out.shape == (B, CFG.in_channels) and out.dtype == jnp.float32
  assert np.all(np.abs(out) <= CFG.vae_scale + 1e-6)  # x0 is clipped
  again = _jit_sample(variables, _z(), 3.0, rng=jax.random.key(2))
  np.testing.assert_array_equal(out, again)


def test_sample_jit_traces_once(variables):
  traces = []

  @jax.jit
  def sample(v, z, s, rng):
    traces.append(1)  # runs only while tracing
    return _sample(v, z, s, rng=rng)

  for i, s in enumerate((1.5, 4.5, 1.0)):
    sample(variables, _z(seed=i), s, jax.random.key(i)).block_until_ready()
  assert len(traces) == 1


def test_loss_is_finite_and_differentiable(variables):
  target = jax.random.normal(jax.random.key(3), (B, CFG.in_channels))
  z = _z(rows=B)

  def total(params, rng):
    terms = HEAD.apply({"params": params}, target, z, rng,
                       method=DiffusionHead.loss)
    return terms["loss"].mean(), terms

  (value, terms), grads = jax.jit(jax.value_and_grad(total, has_aux=True))(
      variables["params"], jax.random.key(4))
  assert terms["loss"].shape == (CFG.batch_mul * B,)
  assert np.isfinite(value)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert np.abs(grads["net"]["input_proj"]["kernel"]).max() > 0

  # The VB term trains only the variance columns of the output layer.
  def vb_only(params):
    t = jnp.array([0, 5, 500])
    noise = jnp.ones((B, CFG.in_channels))
    return HEAD.apply({"params": params}, target, z, t, noise,
                      method=DiffusionHead.training_losses)["vb"].sum()
  grads = jax.jit(jax.grad(vb_only))(variables["params"])
  kernel = grads["net"]["final_layer"]["linear"]["kernel"]
  c = CFG.in_channels
  assert not np.any(kernel[:, :c]) and np.abs(kernel[:, c:]).max() > 0


@pytest.mark.parametrize("call, match", [
    (lambda v: HEAD.apply(v, jnp.zeros((B, 5)), _z(rows=B), jax.random.key(0),
                          method=DiffusionHead.loss), r"target must be"),
    (lambda v: HEAD.apply(v, jnp.zeros((B, 8)), _z(rows=B + 1),
                          jax.random.key(0), method=DiffusionHead.loss),
     r"rows"),
    (lambda v: HEAD.apply(v, jnp.zeros((B, 8)), _z(rows=B),
                          method=DiffusionHead.loss), r"rng"),
    (lambda v: _sample(v, _z(rows=5), 2.0, rng=jax.random.key(0)), r"2B"),
    (lambda v: _sample(v, jnp.zeros((6, 7)), 2.0, rng=jax.random.key(0)),
     r"z must be"),
    (lambda v: _sample(v, _z(), jnp.ones(2), rng=jax.random.key(0)),
     r"cfg_scale must be a scalar"),
    (lambda v: _sample(v, _z(), float("nan"), rng=jax.random.key(0)),
     r"cfg_scale must be finite"),
    (lambda v: _sample(v, _z(), 2.0, noise=[jnp.zeros((B, 8))] * 8),
     r"9 arrays"),
    (lambda v: _sample(v, _z(), 2.0, noise=[jnp.zeros((B, 4))] * 9),
     r"noise\[0\]"),
    (lambda v: _sample(v, _z(), 2.0), r"rng or an explicit noise"),
])
def test_bad_inputs_raise(variables, call, match):
  with pytest.raises(ValueError, match=match):
    call(variables)


def test_import_names_bad_keys(variables):
  state = official_diffusion.export_diffusion_params(variables["params"])
  state["other.weight"] = np.zeros(3)  # outside the prefix: ignored
  params = official_diffusion.import_diffusion_params(state, CFG)
  jax.tree.map(np.testing.assert_array_equal, params, variables["params"])
  broken = dict(state)
  del broken["diffloss.net.cond_embed.bias"]
  broken["diffloss.net.input_proj.weight"] = np.zeros((32, 9), np.float32)
  broken["diffloss.net.extra.weight"] = np.zeros(1, np.float32)
  with pytest.raises(CheckpointError) as err:
    official_diffusion.import_diffusion_params(broken, CFG)
  for needle in ("missing key(s): ['diffloss.net.cond_embed.bias']",
                 "diffloss.net.input_proj.weight: checkpoint [32, 9], "
                 "expected [32, 8]", "unexpected key(s): "
                 "['diffloss.net.extra.weight']"):
    assert needle in str(err.value)


def test_respacing_forms():
  assert sched_lib.space_timesteps(100, "ddim10") == tuple(range(0, 100, 10))
  assert sched_lib.space_timesteps(10, "") == tuple(range(10))
  assert sched_lib.space_timesteps(100, "2,3") == (0, 49, 50, 74, 99)
  with pytest.raises(ValueError, match="cannot divide"):
    sched_lib.space_timesteps(10, "11")
  sched = sched_lib.make_schedule(1000, "8")
  assert sched is sched_lib.make_schedule(1000, "8")  # cached
  np.testing.assert_allclose(np.cumprod(1 - sched.betas),
                             sched_lib.make_schedule(1000).alphas_cumprod[
                                 sched.timestep_map], rtol=1e-9)
