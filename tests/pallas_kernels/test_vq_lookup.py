"""Tests of the Pallas VQ codebook lookup against the jnp reference.

Kernels run interpreted on CPU: the Triton variant with interpret=True, the
TPU variant under pltpu.force_tpu_interpret_mode().
"""

import jax
from jax.experimental.pallas import tpu as pltpu
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import ops
from pallas_kernels import VQLookupConfig
from pallas_kernels import vq_lookup
from pallas_kernels import vq_lookup_reference
from pallas_kernels.vq_lookup import vq_lookup_pallas_gpu
from pallas_kernels.vq_lookup import vq_lookup_pallas_tpu

# (N, V, D): N and V deliberately not multiples of the block sizes.
SHAPES = [(37, 1000, 32), (1, 4096, 32), (300, 1024, 8), (129, 777, 5)]
# None = backend defaults; the small configs force several N and V blocks.
GPU_CONFIGS = [None, VQLookupConfig(block_n=16, block_v=128)]
TPU_CONFIGS = [None, VQLookupConfig(block_n=64, block_v=256)]


def _random(n, v, d, seed=0):
  kz, ke = jax.random.split(jax.random.key(seed))
  return jax.random.normal(kz, (n, d)), jax.random.normal(ke, (v, d))


def _run_gpu(z, codebook, config=None):
  return vq_lookup_pallas_gpu(z, codebook, config=config, interpret=True)


def _run_tpu(z, codebook, config=None):
  with pltpu.force_tpu_interpret_mode():
    return vq_lookup_pallas_tpu(z, codebook, config=config)


VARIANTS = [(_run_gpu, c) for c in GPU_CONFIGS] + [
    (_run_tpu, c) for c in TPU_CONFIGS]
VARIANT_IDS = ["gpu-default", "gpu-small", "tpu-default", "tpu-small"]
# For the cheaper edge-case tests: one multi-block config per kernel.
SMALL_VARIANTS = [VARIANTS[1], VARIANTS[3]]
SMALL_IDS = [VARIANT_IDS[1], VARIANT_IDS[3]]


def _assert_matches_reference(run, config, z, codebook):
  ref_idx, ref_q = vq_lookup_reference(z, codebook)
  idx, q = run(z, codebook, config)
  assert idx.dtype == jnp.int32 and idx.shape == (z.shape[0],)
  assert q.dtype == codebook.dtype and q.shape == z.shape
  np.testing.assert_array_equal(idx, ref_idx)
  np.testing.assert_array_equal(q, ref_q)


@pytest.mark.parametrize("run,config", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("n,v,d", SHAPES)
def test_matches_reference(run, config, n, v, d):
  _assert_matches_reference(run, config, *_random(n, v, d))


@pytest.mark.parametrize("run,config", SMALL_VARIANTS, ids=SMALL_IDS)
def test_bf16_codebook_keeps_dtype(run, config):
  z, codebook = _random(50, 300, 32, seed=1)
  _assert_matches_reference(run, config, z.astype(jnp.bfloat16),
                            codebook.astype(jnp.bfloat16))


@pytest.mark.parametrize("run,config", SMALL_VARIANTS, ids=SMALL_IDS)
def test_padded_codewords_never_win(run, config):
  # Real codewords are far from z; zero-filled padding rows would be closest.
  z, codebook = _random(20, 1000, 16, seed=2)
  _assert_matches_reference(run, config, 0.01 * z, codebook + 10.0)


@pytest.mark.parametrize("run,config", VARIANTS, ids=VARIANT_IDS)
def test_ties_go_to_lowest_index(run, config):
  z, codebook = _random(40, 4096, 32, seed=3)
  # For every config 3000 is in a later V block than 5 (900 too, except for
  # block_v=1024); 1500/1501 share a block, with z equal to the later copy.
  codebook = codebook.at[900].set(codebook[5]).at[3000].set(codebook[5])
  codebook = codebook.at[1501].set(codebook[1500])
  z = z.at[0].set(codebook[5]).at[1].set(codebook[3000])
  z = z.at[2].set(codebook[1501])
  idx, _ = run(z, codebook, config)
  assert idx[0] == 5 and idx[1] == 5 and idx[2] == 1500
  _assert_matches_reference(run, config, z, codebook)


@pytest.mark.parametrize("run,config", SMALL_VARIANTS, ids=SMALL_IDS)
def test_all_codewords_tied(run, config):
  z, _ = _random(9, 1, 32, seed=4)
  codebook = jnp.ones((700, 32))
  idx, _ = run(z, codebook, config)
  np.testing.assert_array_equal(idx, np.zeros(9, np.int32))


def _loss_grads(lookup_fn, z, codebook, w):
  def loss(z, codebook):
    return jnp.sum(w * lookup_fn(z, codebook)[1])
  return jax.grad(loss, argnums=(0, 1))(z, codebook)


@pytest.mark.parametrize("run", [_run_gpu, _run_tpu], ids=["gpu", "tpu"])
def test_gradient_matches_reference(run):
  # V < N so several rows pick the same codeword and the scatter-add sums.
  z, codebook = _random(300, 100, 32, seed=5)
  w = jax.random.normal(jax.random.key(6), z.shape)
  dz, dcb = _loss_grads(lambda z, c: run(z, c), z, codebook, w)
  ref_dz, ref_dcb = _loss_grads(vq_lookup_reference, z, codebook, w)
  np.testing.assert_array_equal(dz, ref_dz)
  np.testing.assert_array_equal(dz, np.zeros_like(z))
  np.testing.assert_allclose(dcb, ref_dcb, rtol=1e-6, atol=1e-6)


def test_dispatch_pallas_on_cpu_with_grad_and_jit():
  z, codebook = _random(37, 1000, 32, seed=7)
  w = jax.random.normal(jax.random.key(8), z.shape)
  fn = jax.jit(lambda z, c: vq_lookup(z, c, implementation="pallas"))
  idx, q = fn(z, codebook)
  ref_idx, ref_q = vq_lookup_reference(z, codebook)
  np.testing.assert_array_equal(idx, ref_idx)
  np.testing.assert_array_equal(q, ref_q)
  _, dcb = _loss_grads(fn, z, codebook, w)
  _, ref_dcb = _loss_grads(vq_lookup_reference, z, codebook, w)
  np.testing.assert_allclose(dcb, ref_dcb, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ["cpu", "gpu", "tpu"])
def test_auto_resolves_to_xla(backend):
  assert ops._auto_choice(backend) == "xla"


def test_auto_and_xla_equal_reference_under_jit():
  z, codebook = _random(64, 512, 32, seed=9)
  ref_idx, ref_q = vq_lookup_reference(z, codebook)
  for impl in ("auto", "xla"):
    idx, q = jax.jit(lambda z, c, impl=impl: vq_lookup(
        z, c, implementation=impl))(z, codebook)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(q, ref_q)


def test_empty_z():
  _, codebook = _random(1, 64, 8)
  idx, q = vq_lookup_pallas_gpu(jnp.zeros((0, 8)), codebook, interpret=True)
  assert idx.shape == (0,) and q.shape == (0, 8)


def test_bad_implementation_raises():
  z, codebook = _random(4, 16, 8)
  with pytest.raises(ValueError, match="'triton'.*'auto', 'xla', 'pallas'"):
    vq_lookup(z, codebook, implementation="triton")


@pytest.mark.parametrize("z_shape,cb_shape", [
    ((2, 4, 8), (16, 8)),  # z not 2-D
    ((4, 8), (16, 8, 1)),  # codebook not 2-D
    ((4, 8), (16, 9)),  # D mismatch
])
@pytest.mark.parametrize("implementation", ["xla", "pallas"])
def test_bad_shapes_raise(z_shape, cb_shape, implementation):
  z, codebook = jnp.zeros(z_shape), jnp.zeros(cb_shape)
  with pytest.raises(ValueError, match=r"z\.shape=.*codebook\.shape="):
    vq_lookup(z, codebook, implementation=implementation)


@pytest.mark.parametrize("run,config", [
    (_run_gpu, VQLookupConfig(block_n=48, block_v=128)),  # not a power of 2
    (_run_gpu, VQLookupConfig(block_n=8, block_v=128)),  # below tl.dot's 16
    (_run_tpu, VQLookupConfig(block_n=64, block_v=100)),  # not 128-aligned
])
def test_bad_block_sizes_raise(run, config):
  z, codebook = _random(4, 16, 8)
  with pytest.raises(ValueError, match="block sizes"):
    run(z, codebook, config)
