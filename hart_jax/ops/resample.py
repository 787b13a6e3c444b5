"""Exact re-implementations of torch's `area` and `bicubic` interpolation.

HART's multi-scale quantizer moves feature maps between scales with
`F.interpolate(mode="area")` and `F.interpolate(mode="bicubic")`.
`jax.image.resize` uses other kernels (and antialiasing), so parity with the
official tokenizer needs these by hand (hart_spec.md section 3).

Both resizes are separable and linear, so each axis becomes a small
[out, in] matrix built in numpy from static shapes at trace time; applying
it is one einsum per axis, which is jit-, vmap- and grad-friendly.
Layout is NHWC.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

# Keys' cubic convolution constant used by torch (and OpenCV), not -0.5.
_CUBIC_A = -0.75


@functools.lru_cache(maxsize=None)
def area_matrix(n_in: int, n_out: int) -> np.ndarray:
  """Weights of torch's area mode (adaptive average pooling) on one axis.

  Output cell i averages input cells floor(i*n_in/n_out) up to
  ceil((i+1)*n_in/n_out) - 1; bins may overlap when n_in % n_out != 0.

  Args:
    n_in: input length.
    n_out: output length.

  Returns:
    float32 array [n_out, n_in].
  """
  _check_sizes(n_in, n_out)
  mat = np.zeros((n_out, n_in), np.float64)
  for i in range(n_out):
    start = (i * n_in) // n_out
    end = -((-(i + 1) * n_in) // n_out)  # integer ceil
    mat[i, start:end] = 1.0 / (end - start)
  return mat.astype(np.float32)


def _cubic_weights(t: np.float32) -> list[np.float32]:
  """Keys cubic weights for taps at offsets -1, 0, 1, 2 (float32 math)."""
  a = np.float32(_CUBIC_A)
  one, two = np.float32(1), np.float32(2)

  def near(x):  # |x| <= 1
    return ((a + two) * x - (a + np.float32(3))) * x * x + one

  def far(x):  # 1 < |x| < 2
    return ((a * x - np.float32(5) * a) * x + np.float32(8) * a) * x - (
        np.float32(4) * a)

  # Same operation order as torch's get_cubic_upsample_coefficients, so the
  # float32 weights agree to the bit.
  return [far(t + one), near(t), near(one - t), far((one - t) + one)]


@functools.lru_cache(maxsize=None)
def bicubic_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
  """Taps of torch's bicubic mode (align_corners=False) on one axis.

  The source coordinate is (d + 0.5) * n_in / n_out - 0.5 with the scale
  computed in float32 as torch does; taps at floor-1 .. floor+2 are clamped
  to the border; there is no antialiasing.

  Args:
    n_in: input length.
    n_out: output length.

  Returns:
    (indices int32 [4, n_out], weights float32 [4, n_out]).
  """
  _check_sizes(n_in, n_out)
  scale = np.float32(n_in) / np.float32(n_out)
  index = np.zeros((4, n_out), np.int32)
  weight = np.zeros((4, n_out), np.float32)
  for d in range(n_out):
    src = scale * (np.float32(d) + np.float32(0.5)) - np.float32(0.5)
    base = min(int(np.floor(src)), n_in - 1)
    t = np.float32(min(max(src - np.float32(base), 0.0), 1.0))
    for j, w in enumerate(_cubic_weights(t)):
      index[j, d] = min(max(base - 1 + j, 0), n_in - 1)
      weight[j, d] = w
  return index, weight


def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """The bicubic taps as a dense float64 [n_out, n_in] matrix (for tests)."""
  index, weight = bicubic_taps(n_in, n_out)
  mat = np.zeros((n_out, n_in), np.float64)
  for j in range(4):
    np.add.at(mat, (np.arange(n_out), index[j]), weight[j])
  return mat


def _check_sizes(n_in: int, n_out: int) -> None:
  if n_in < 1 or n_out < 1:
    raise ValueError(f"resize sizes must be positive, got {n_in} -> {n_out}")


def _check_nhwc(x: jax.Array) -> None:
  if x.ndim != 4:
    raise ValueError(f"expected an NHWC array, got shape {x.shape}")


def _apply_separable(x: jax.Array, mat_h: np.ndarray,
                     mat_w: np.ndarray) -> jax.Array:
  # HIGHEST precision: on TPU the default matmul precision is bf16, which
  # would break parity with torch's fp32 interpolation.
  out = jnp.einsum("oh,bhwc->bowc", jnp.asarray(mat_h, x.dtype), x,
                   precision=jax.lax.Precision.HIGHEST)
  return jnp.einsum("pw,bowc->bopc", jnp.asarray(mat_w, x.dtype), out,
                    precision=jax.lax.Precision.HIGHEST)


def area_resize(x: jax.Array, size: tuple[int, int] | int) -> jax.Array:
  """torch `F.interpolate(x, size, mode="area")` for an NHWC array."""
  _check_nhwc(x)
  h_out, w_out = (size, size) if isinstance(size, int) else size
  _, h_in, w_in, _ = x.shape
  if (h_in, w_in) == (h_out, w_out):
    return x
  return _apply_separable(x, area_matrix(h_in, h_out), area_matrix(w_in, w_out))


def bicubic_resize(x: jax.Array, size: tuple[int, int] | int) -> jax.Array:
  """torch `F.interpolate(x, size, mode="bicubic")` for an NHWC array."""
  _check_nhwc(x)
  h_out, w_out = (size, size) if isinstance(size, int) else size
  _, h_in, w_in, _ = x.shape
  if (h_in, w_in) == (h_out, w_out):
    # torch's weights at t=0 are exactly (0, 1, 0, 0): the identity.
    return x
  # Width first, then height, four taps summed in order: the same
  # arithmetic as torch's CPU kernel, which keeps the match within 1e-6
  # (a dense matrix product would merge clamped taps and drift by ~2e-6).
  x = _cubic_1d(x, *bicubic_taps(w_in, w_out), axis=2)
  return _cubic_1d(x, *bicubic_taps(h_in, h_out), axis=1)


def _cubic_1d(x: jax.Array, index: np.ndarray, weight: np.ndarray,
              axis: int) -> jax.Array:
  shape = [1] * x.ndim
  shape[axis] = -1
  out = None
  for j in range(4):
    term = jnp.take(x, index[j], axis=axis) * jnp.asarray(
        weight[j].reshape(shape), x.dtype)
    out = term if out is None else out + term
  return out


def nearest_upsample_2x(x: jax.Array) -> jax.Array:
  """torch `F.interpolate(scale_factor=2, mode="nearest")`, NHWC."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
