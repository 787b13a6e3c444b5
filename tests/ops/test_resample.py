"""torch-exact area / bicubic resampling against golden torch outputs."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from hart_jax.models.tokenizer import config as tok_config
from hart_jax.ops import resample
from tests.helpers import nchw, nhwc

REAL_SCHEDULES = (tok_config.SCHEDULE_256, tok_config.SCHEDULE_512,
                  tok_config.SCHEDULE_1024, (1, 2, 3, 4))
TINY_ONLY = ((1, 2, 3, 4, 6),)


def _pairs(schedules):
  for sched in schedules:
    last = sched[-1]
    for s in sched[:-1]:
      yield "area", last, s
      yield "bicubic", s, last


@pytest.fixture(scope="module")
def golden_resize(golden_dir):
  return dict(np.load(golden_dir / "resize.npz"))


def _run(mode, n_in, n_out, x):
  fn = resample.area_resize if mode == "area" else resample.bicubic_resize
  return nchw(jax.jit(fn, static_argnums=1)(jnp.asarray(nhwc(x)), n_out))


def test_every_golden_pair_within_1e5(golden_resize):
  """The golden contract: every stored torch output to 1e-5 absolute."""
  outputs = {k for k in golden_resize if not k.startswith("x_")}
  assert outputs == {f"{m}_{a}_to_{b}" for m, a, b in _pairs(
      REAL_SCHEDULES + TINY_ONLY)}
  for key in sorted(outputs):
    ref = golden_resize[key]
    mode, n_in, _, n_out = key.split("_")
    got = _run(mode, int(n_in), int(n_out), golden_resize[f"x_{n_in}"])
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5, err_msg=key)


@pytest.mark.parametrize("mode,n_in,n_out", sorted(set(_pairs(
    REAL_SCHEDULES))))
def test_schedule_pairs_within_1e6(golden_resize, mode, n_in, n_out):
  """Every pair the 256/512/1024 schedules use matches torch to 1e-6."""
  key = f"{mode}_{n_in}_to_{n_out}"
  got = _run(mode, n_in, n_out, golden_resize[f"x_{n_in}"])
  np.testing.assert_allclose(got, golden_resize[key], rtol=0, atol=1e-6,
                             err_msg=key)


def test_area_matrix_rows_are_overlapping_bins():
  # 5 -> 3: bins [0,2), [1,4), [3,5): each averages 2, 3, 2 cells.
  mat = resample.area_matrix(5, 3)
  np.testing.assert_allclose(mat.sum(1), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(mat > 0, [[1, 1, 0, 0, 0], [0, 1, 1, 1, 0],
                                          [0, 0, 0, 1, 1]])


def test_bicubic_identity_and_constants():
  x = jax.random.normal(jax.random.key(0), (1, 7, 7, 2))
  np.testing.assert_array_equal(resample.bicubic_resize(x, 7), x)
  const = jnp.full((1, 3, 3, 1), 2.5)
  # Keys weights sum to one, so constants survive any upsampling.
  np.testing.assert_allclose(resample.bicubic_resize(const, 64), 2.5,
                             rtol=1e-6)
  np.testing.assert_allclose(resample.area_resize(const, 2), 2.5, rtol=1e-6)


def test_bicubic_weights_keys_kernel():
  # Half-way between cells: Keys(A=-0.75) weights are
  # (-0.09375, 0.59375, 0.59375, -0.09375).
  idx, w = resample.bicubic_taps(4, 8)
  d = 3  # src = (3.5) * 0.5 - 0.5 = 1.25 -> t = 0.25; check one known row
  np.testing.assert_array_equal(idx[:, d], [0, 1, 2, 3])
  t = 0.25
  a = -0.75
  near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1
  far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  np.testing.assert_allclose(w[:, d], [far(1 + t), near(t), near(1 - t),
                                       far(2 - t)], rtol=1e-6)


def test_resize_is_differentiable():
  x = jax.random.normal(jax.random.key(1), (2, 6, 6, 3))
  g = jax.grad(lambda x: jnp.sum(resample.bicubic_resize(x, 13) ** 2))(x)
  assert g.shape == x.shape and bool(jnp.all(jnp.isfinite(g)))


def test_bad_sizes_raise():
  with pytest.raises(ValueError, match="NHWC"):
    resample.area_resize(jnp.zeros((3, 4, 4)), 2)
  with pytest.raises(ValueError, match="positive"):
    resample.area_matrix(4, 0)
