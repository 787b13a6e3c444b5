"""HART's rotary position embeddings (hart_spec.md 2.5), exactly.

Context tokens use standard 1-D rotate-half RoPE over hd/2 frequencies.
Image tokens use a 2-D variant over hd/4 frequencies which is NOT a proper
rotation: the first half of each head is rotated by row angles, the second
half by column angles, but rotate_half pairs d with d + hd/2, so each pair
mixes the two angles. Reproduced as is (the checkpoints were trained so).
Tables are float32 and cast to the activation dtype before the rotation.
"""

import functools

import jax.numpy as jnp
import numpy as np

THETA = 10000.0


@functools.lru_cache(maxsize=None)
def inv_freq(head_dim: int, stride: int) -> np.ndarray:
  """1 / theta**(arange(0, hd, stride) / hd) in float32 (stride 2: 1-D)."""
  exponents = np.arange(0, head_dim, stride).astype(np.float32) / np.float32(
      head_dim)
  # A correctly rounded float32 power, then a float32 reciprocal: bit-equal
  # to torch's table (numpy's float32 pow is off by an ulp here and there).
  powers = np.power(np.float64(THETA), exponents.astype(np.float64))
  return np.float32(1.0) / powers.astype(np.float32)


@functools.lru_cache(maxsize=None)
def scale_grid(patch_nums: tuple[int, ...], last: int) -> np.ndarray:
  """Positions (i/pn*P, j/pn*P) of every token of `patch_nums`, [L, 2] f32.

  Divide first, then multiply, in float32 (i=1, pn=3, P=64 -> 21.333334),
  row-major within a scale, scales in order.
  """
  out = []
  for pn in patch_nums:
    steps = np.arange(pn).astype(np.float32) / np.float32(pn) * np.float32(
        last)
    ii, jj = np.meshgrid(steps, steps, indexing="ij")
    out.append(np.stack([ii.ravel(), jj.ravel()], -1))
  return np.concatenate(out, 0).astype(np.float32)


def tables_1d(positions: jnp.ndarray, head_dim: int):
  """cos, sin [B, S, hd] for integer/float positions [B, S]."""
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq(head_dim, 2)
  emb = jnp.concatenate([freqs, freqs], -1)
  return jnp.cos(emb), jnp.sin(emb)


def tables_2d(positions: jnp.ndarray, head_dim: int):
  """cos, sin [B, S, hd] for 2-D positions [B, S, 2]."""
  f = inv_freq(head_dim, 4)
  rows = positions[..., 0:1].astype(jnp.float32) * f
  cols = positions[..., 1:2].astype(jnp.float32) * f
  emb = jnp.concatenate([rows, rows, cols, cols], -1)
  return jnp.cos(emb), jnp.sin(emb)


def image_positions(patch_nums: tuple[int, ...], offset: jnp.ndarray,
                    keep: jnp.ndarray | None = None) -> jnp.ndarray:
  """Positions [B, L', 2] of image tokens for scales 1..K-1.

  Args:
    patch_nums: the full schedule (scale 0 is the context's last slot).
    offset: [B] the last context position id, added to both coordinates.
    keep: optional [B, L'] indices into the flattened token list (the
      subsampled last scale keeps its own positions).
  """
  grid = jnp.asarray(scale_grid(tuple(patch_nums[1:]), patch_nums[-1]))
  pos = grid[None] + offset.astype(jnp.float32)[:, None, None]
  if keep is not None:
    pos = jnp.take_along_axis(pos, keep[..., None], axis=1)
  return pos


def rotate(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
  """x [B, H, S, hd] with tables [B, S, hd]: x*cos + rotate_half(x)*sin."""
  cos = cos[:, None].astype(x.dtype)
  sin = sin[:, None].astype(x.dtype)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], -1)
  return x * cos + rotated * sin
