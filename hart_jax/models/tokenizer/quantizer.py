"""HART's multi-scale hybrid quantizer (hart_spec.md section 3).

A latent f [B, P, P, C] becomes K index maps (one per scale of the
schedule, coarse to fine) plus a continuous residual. Every scale quantizes
what the coarser scales left over: area-downsample the rest, take the
nearest codeword, bicubic-upsample it back to P x P, pass it through one of
the shared phi convolutions, subtract.

Where the official code differs between paths, so does this file, on purpose:
- encoding and generation skip phi on the last scale (it is already P x P),
- the tokenizer's training forward and the VAR-style decode apply phi at
  every scale, the last one included.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hart_jax.models.tokenizer.config import TokenizerConfig
from hart_jax.ops.resample import area_resize, bicubic_resize
import pallas_kernels


@functools.lru_cache(maxsize=None)
def phi_index(si: int, num_scales: int, num_phi: int = 4) -> int:
  """Which shared phi convolution scale `si` of `num_scales` uses.

  The phi whose tick is nearest to si / (K - 1), first on ties. Exact ties
  occur and the official code settles them with numpy float64 rounding,
  so this must be float64 numpy too (not fp32, not exact fractions).
  """
  if num_phi == 1:
    return 0
  if num_phi == 4:
    ticks = np.linspace(1 / 3 / num_phi, 1 - 1 / 3 / num_phi, num_phi)
  else:
    ticks = np.linspace(1 / 2 / num_phi, 1 - 1 / 2 / num_phi, num_phi)
  at = si / (num_scales - 1)
  return int(np.argmin(np.abs(ticks - at)))


class MultiScaleQuantizer(nn.Module):
  """Codebook [V, C] plus the shared phi convolutions."""
  config: TokenizerConfig

  def setup(self):
    c = self.config
    self.embedding = self.param("embedding", nn.initializers.normal(1.0),
                                (c.vocab_size, c.z_channels))
    # abs(quant_resi) <= 1e-6 means phi is the identity and has no weights.
    n_phi = c.num_phi if abs(c.quant_resi) > 1e-6 else 0
    self.phis = [nn.Conv(c.z_channels, (3, 3), padding=1, name=f"phi_{i}")
                 for i in range(n_phi)]
    # Official buffer (EMA of codeword hits per scale); exported for interop.
    self.ema_vocab_hit = self.variable(
        "buffers", "ema_vocab_hit_SV", jnp.zeros,
        (len(c.v_patch_nums), c.vocab_size), jnp.float32)

  def touch_all(self, f: jax.Array) -> jax.Array:
    """Uses the codebook and every phi once (for shape-free init)."""
    out = self.lookup(f)[1]
    for conv in self.phis:
      out = out + conv(f)
    return out

  # --- building blocks -----------------------------------------------------

  def phi(self, h: jax.Array, si: int, num_scales: int) -> jax.Array:
    if not self.phis:
      return h
    r = abs(self.config.quant_resi)
    conv = self.phis[phi_index(si, num_scales, len(self.phis))]
    return h * (1 - r) + conv(h) * r

  def lookup(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Nearest codeword of z [..., C]: (indices [...], codewords [..., C])."""
    lead = z.shape[:-1]
    idx, q = pallas_kernels.vq_lookup(
        z.reshape(-1, z.shape[-1]).astype(jnp.float32), self.embedding,
        implementation=self.config.vq_implementation)
    return idx.reshape(lead), q.reshape(*lead, -1)

  def codewords(self, idx: jax.Array, pn: int) -> jax.Array:
    """Index map [B, pn*pn] -> codeword map [B, pn, pn, C]."""
    return jnp.take(self.embedding, idx, axis=0).reshape(
        idx.shape[0], pn, pn, -1)

  def _schedule(self, patch_nums):
    return tuple(patch_nums or self.config.v_patch_nums)

  # --- encoding --------------------------------------------------------------

  def encode(self, f: jax.Array, patch_nums=None):
    """Latent f [B, P, P, C] -> (index maps [B, pn*pn] per scale, residual).

    The residual is f - sum_{k<K-1} phi(up(e_k)), [B, P*P, C]: what is left
    before the last scale's codewords (the official `frest` output). The
    continuous residual token is that minus codebook[last indices].
    """
    pns = self._schedule(patch_nums)
    k_scales, side = len(pns), pns[-1]
    _check_latent(f, side)
    rest = f.astype(jnp.float32)
    indices = []
    for si, pn in enumerate(pns):
      idx, q = self.lookup(area_resize(rest, pn))
      indices.append(idx.reshape(f.shape[0], pn * pn))
      if si == k_scales - 1:
        break
      rest = rest - self.phi(bicubic_resize(q, side), si, k_scales)
    return indices, rest.reshape(f.shape[0], side * side, -1)

  # --- decoding index maps to latents ---------------------------------------

  def indices_to_fhat(self, indices, residual=None, patch_nums=None):
    """Generation-style f_hat: phi(up(e_k)) for k < K-1, then e_last raw.

    With `residual` [B, P*P, C] (the continuous token) the result is the
    hybrid latent; without it, the discrete-only latent.
    """
    pns = self._schedule(patch_nums)
    side = pns[-1]
    fhat = self._partial_fhat(indices, pns)
    last = self.codewords(indices[-1], side)
    if residual is not None:
      last = last + residual.reshape(last.shape)
    return fhat + last

  def indices_to_fhat_var_style(self, indices, patch_nums=None):
    """VAR-style f_hat: phi at every scale, the last one included."""
    pns = self._schedule(patch_nums)
    fhat = self._partial_fhat(indices, pns)
    return fhat + self.phi(self.codewords(indices[-1], pns[-1]),
                           len(pns) - 1, len(pns))

  def _partial_fhat(self, indices, pns):
    side, k_scales = pns[-1], len(pns)
    _check_indices(indices, pns)
    fhat = jnp.zeros((indices[0].shape[0], side, side,
                      self.config.z_channels), jnp.float32)
    for si in range(k_scales - 1):
      up = bicubic_resize(self.codewords(indices[si], pns[si]), side)
      fhat = fhat + self.phi(up, si, k_scales)
    return fhat

  def teacher_forcing_input(self, indices, patch_nums=None) -> jax.Array:
    """The transformer's teacher-forcing input [B, L - pn_0**2, C].

    For k = 1..K-1, the running f_hat after scales < k, area-downsampled to
    pn_k and flattened row-major (official `idxBl_to_var_input`).
    """
    pns = self._schedule(patch_nums)
    side, k_scales = pns[-1], len(pns)
    _check_indices(indices, pns)
    fhat = jnp.zeros((indices[0].shape[0], side, side,
                      self.config.z_channels), jnp.float32)
    inputs = []
    for si in range(k_scales - 1):
      up = bicubic_resize(self.codewords(indices[si], pns[si]), side)
      fhat = fhat + self.phi(up, si, k_scales)
      nxt = area_resize(fhat, pns[si + 1])
      inputs.append(nxt.reshape(nxt.shape[0], -1, nxt.shape[-1]))
    return jnp.concatenate(inputs, axis=1)

  def next_autoregressive_input(self, si: int, fhat: jax.Array,
                                h: jax.Array, patch_nums=None):
    """One sampler step: add scale si's map h [B, pn, pn, C] to f_hat.

    Returns (f_hat, the next step's input map). The last scale is added
    without phi and without resizing (official hybrid behaviour).
    """
    pns = self._schedule(patch_nums)
    side, k_scales = pns[-1], len(pns)
    if si == k_scales - 1:
      fhat = fhat + h
      return fhat, fhat
    fhat = fhat + self.phi(bicubic_resize(h, side), si, k_scales)
    return fhat, area_resize(fhat, pns[si + 1])

  # --- training forward -------------------------------------------------------

  def train_forward(self, f: jax.Array, rng: jax.Array | None,
                    skip_continuous_prob: float | None = None,
                    patch_nums=None):
    """The hybrid quantizer's training forward.

    Args:
      f: latent [B, P, P, C] (gradients flow to it straight-through).
      rng: key for the discrete/continuous draw (one draw per batch, as the
        official code does); None means always continuous.
      skip_continuous_prob: probability of decoding the discrete-only
        latent; defaults to the config's value.
      patch_nums: schedule override.

    Returns:
      dict(fhat=straight-through latent, vq_loss=scalar, indices=list,
      usage_percent=share of codewords hit at least once, hits=[K, V]
      per-scale hit counts, used_continuous=bool scalar).
    """
    c = self.config
    p_skip = (c.skip_continuous_prob if skip_continuous_prob is None
              else skip_continuous_prob)
    pns = self._schedule(patch_nums)
    side, k_scales = pns[-1], len(pns)
    _check_latent(f, side)
    f = f.astype(jnp.float32)
    f_ng = jax.lax.stop_gradient(f)
    rest, fhat = f_ng, jnp.zeros_like(f_ng)
    vq_loss, indices, hits = 0.0, [], []
    for si, pn in enumerate(pns):
      idx, q = self.lookup(area_resize(rest, pn))
      indices.append(idx.reshape(f.shape[0], pn * pn))
      hits.append(jnp.zeros((c.vocab_size,), jnp.float32).at[
          idx.reshape(-1)].add(1.0))
      # Unlike encoding, phi also runs on the last scale here.
      h = self.phi(bicubic_resize(q, side), si, k_scales)
      fhat = fhat + h
      rest = rest - h
      vq_loss = vq_loss + c.beta * jnp.mean(
          (jax.lax.stop_gradient(fhat) - f) ** 2) + jnp.mean((fhat - f_ng) ** 2)
    if rng is None:
      use_continuous = jnp.bool_(True)
    else:
      use_continuous = jax.random.uniform(rng) >= p_skip
    fhat = jnp.where(use_continuous, fhat + rest, fhat)
    hits = jnp.stack(hits)
    return dict(
        fhat=jax.lax.stop_gradient(fhat) - f_ng + f,
        vq_loss=vq_loss / k_scales,
        indices=indices,
        hits=hits,
        usage_percent=jnp.mean(hits.sum(0) >= 1) * 100.0,
        used_continuous=use_continuous)


def _check_latent(f: jax.Array, side: int) -> None:
  if f.ndim != 4 or f.shape[1] != side or f.shape[2] != side:
    raise ValueError(f"latent shape {f.shape} does not match the schedule's "
                     f"last scale {side}x{side} (expected [B, {side}, {side}, "
                     "C])")


def _check_indices(indices, pns) -> None:
  if len(indices) != len(pns):
    raise ValueError(f"got {len(indices)} index maps for a schedule of "
                     f"{len(pns)} scales {pns}")
  for si, (idx, pn) in enumerate(zip(indices, pns)):
    if idx.ndim != 2 or idx.shape[1] != pn * pn:
      raise ValueError(f"index map {si} has shape {idx.shape}, expected "
                       f"[B, {pn * pn}] for scale {pn}")
