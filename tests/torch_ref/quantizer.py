"""HART's multi-scale hybrid quantizer, as a plain torch reference.

Parameter and buffer names follow the official `VectorQuantizer2` /
`HARTHybridQuantizer` (`embedding.weight`, `quant_resi.qresi_ls.{i}.*`,
`ema_vocab_hit_SV`). The maths is hart_spec.md section 3; the code is an
independent rewrite for tests.
"""

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def phi_ticks(num_phi: int) -> np.ndarray:
  # Computed with the official float64 expressions: exact ties between
  # ticks are settled by their rounding (hart_spec.md section 3), so
  # "1/12" must be spelt 1/3/K, not 1/12.
  if num_phi == 4:
    return np.linspace(1 / 3 / num_phi, 1 - 1 / 3 / num_phi, num_phi)
  return np.linspace(1 / 2 / num_phi, 1 - 1 / 2 / num_phi, num_phi)


def phi_index(si: int, num_scales: int, num_phi: int) -> int:
  """The shared phi that scale `si` of `num_scales` uses (first on ties)."""
  at = si / (num_scales - 1)  # python float64, as the official code
  return int(np.argmin(np.abs(phi_ticks(num_phi) - at)))


class Phi(nn.Conv2d):
  """phi(h) = (1 - r) h + r conv3x3(h); a Conv2d so its keys are bare."""

  def __init__(self, channels: int, ratio: float):
    super().__init__(channels, channels, 3, padding=1)
    self.ratio = abs(ratio)

  def forward(self, h: torch.Tensor) -> torch.Tensor:
    return h * (1 - self.ratio) + super().forward(h) * self.ratio


def _make_phi(channels: int, ratio: float) -> nn.Module:
  # A ratio of ~0 means no refinement at all (and no weights).
  return Phi(channels, ratio) if abs(ratio) > 1e-6 else nn.Identity()


class PhiShared(nn.Module):
  """share_quant_resi == 1: one phi for every scale (`quant_resi.qresi`)."""

  def __init__(self, phi: nn.Module):
    super().__init__()
    self.qresi = phi

  def pick(self, si: int, num_scales: int) -> nn.Module:
    del si, num_scales
    return self.qresi


class PhiPartiallyShared(nn.Module):
  """share_quant_resi >= 2: `quant_resi.qresi_ls.{i}` picked by ticks."""

  def __init__(self, phis: List[nn.Module]):
    super().__init__()
    self.qresi_ls = nn.ModuleList(phis)

  def pick(self, si: int, num_scales: int) -> nn.Module:
    return self.qresi_ls[phi_index(si, num_scales, len(self.qresi_ls))]


class PhiNonShared(nn.ModuleList):
  """share_quant_resi == 0: `quant_resi.{i}`, one phi per tick."""

  def pick(self, si: int, num_scales: int) -> nn.Module:
    return self[phi_index(si, num_scales, len(self))]


class HybridQuantizerRef(nn.Module):
  """Codebook, shared phis and the (unused here) code-hit EMA buffer."""

  def __init__(self, vocab_size: int, channels: int,
               v_patch_nums: Sequence[int], quant_resi: float = 0.5,
               share_quant_resi: int = 4, default_qresi_counts: int = 0,
               beta: float = 0.25):
    super().__init__()
    self.channels = channels
    self.v_patch_nums = tuple(v_patch_nums)
    self.beta = beta
    if share_quant_resi == 0:
      count = default_qresi_counts or len(self.v_patch_nums)
      self.quant_resi = PhiNonShared(
          [_make_phi(channels, quant_resi) for _ in range(count)])
    elif share_quant_resi == 1:
      self.quant_resi = PhiShared(_make_phi(channels, quant_resi))
    else:
      self.quant_resi = PhiPartiallyShared(
          [_make_phi(channels, quant_resi) for _ in range(share_quant_resi)])
    self.register_buffer(
        "ema_vocab_hit_SV", torch.zeros(len(self.v_patch_nums), vocab_size))
    self.embedding = nn.Embedding(vocab_size, channels)

  def phi(self, h: torch.Tensor, si: int, num_scales: int) -> torch.Tensor:
    return self.quant_resi.pick(si, num_scales)(h)

  def nearest(self, z: torch.Tensor) -> torch.Tensor:
    """z [N, C] -> index of the L2-nearest codeword [N] (lowest on ties)."""
    codes = self.embedding.weight
    # |z|^2 + |e|^2 - 2 z.e, accumulated in this order (fp32), as specified.
    base = z.square().sum(1, keepdim=True) + codes.square().sum(1)
    return torch.addmm(base, z, codes.t(), beta=1, alpha=-2).argmin(dim=1)

  def min_gap(self, z: torch.Tensor) -> float:
    """Smallest (2nd - 1st nearest) squared distance over z [N, C], float64.

    A comfortable gap means fp32 rounding cannot flip an index, so exact
    index comparisons between implementations are meaningful.
    """
    d = torch.cdist(z.double(), self.embedding.weight.double()).square()
    two = d.topk(2, dim=1, largest=False).values
    return float((two[:, 1] - two[:, 0]).min())

  def codeword_map(self, idx: torch.Tensor, pn: int) -> torch.Tensor:
    """Index map [B, pn*pn] -> codewords [B, C, pn, pn]."""
    return self.embedding(idx).reshape(idx.shape[0], pn, pn, -1).permute(
        0, 3, 1, 2)

  def _schedule(self, patch_nums):
    return tuple(patch_nums or self.v_patch_nums)

  def encode(self, f: torch.Tensor, patch_nums=None,
             gaps: Optional[List[float]] = None
            ) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Latent [B, C, P, P] -> (index maps [B, pn*pn], rest [B, P*P, C]).

    `rest` is f minus phi(up(e_k)) of every scale but the last: the
    residual before the last scale's codewords are subtracted. If `gaps`
    is a list, the per-scale argmin margin (`min_gap`) is appended to it.
    """
    pns = self._schedule(patch_nums)
    b, c, side, _ = f.shape
    assert side == pns[-1], (f.shape, pns)
    rest = f.detach().clone()
    indices = []
    for si, pn in enumerate(pns):
      last = si == len(pns) - 1
      z = rest if last else F.interpolate(rest, size=(pn, pn), mode="area")
      z = z.permute(0, 2, 3, 1).reshape(-1, c)
      idx = self.nearest(z)
      if gaps is not None:
        gaps.append(self.min_gap(z))
      indices.append(idx.reshape(b, pn * pn))
      if last:
        break
      up = F.interpolate(self.codeword_map(indices[-1], pn),
                         size=(side, side), mode="bicubic")
      rest = rest - self.phi(up, si, len(pns))
    return indices, rest.permute(0, 2, 3, 1).reshape(b, side * side, c)

  def partial_fhat(self, indices: List[torch.Tensor],
                   patch_nums=None) -> torch.Tensor:
    """sum_{k < K-1} phi_k(bicubic_up(e_k)) [B, C, P, P]."""
    pns = self._schedule(patch_nums)
    side = pns[-1]
    fhat = 0.0
    for si, (idx, pn) in enumerate(zip(indices[:-1], pns[:-1])):
      up = F.interpolate(self.codeword_map(idx, pn), size=(side, side),
                         mode="bicubic")
      fhat = fhat + self.phi(up, si, len(pns))
    return fhat

  def indices_to_fhat(self, indices: List[torch.Tensor],
                      residual: Optional[torch.Tensor] = None,
                      patch_nums=None) -> torch.Tensor:
    """Generation-style f_hat: the last scale is added raw (no phi).

    With `residual` [B, P*P, C] (the continuous token) this is the hybrid
    latent, else the discrete-only one.
    """
    pns = self._schedule(patch_nums)
    last = self.codeword_map(indices[-1], pns[-1])
    if residual is not None:
      b, _, side, _ = last.shape
      last = last + residual.reshape(b, side, side, -1).permute(0, 3, 1, 2)
    return self.partial_fhat(indices, pns) + last

  def indices_to_fhat_var_style(self, indices: List[torch.Tensor],
                                patch_nums=None) -> torch.Tensor:
    """VAR-style f_hat (`idxBl_to_fhat(last_one=True)`): phi on all scales."""
    pns = self._schedule(patch_nums)
    last = self.codeword_map(indices[-1], pns[-1])
    return self.partial_fhat(indices, pns) + self.phi(
        last, len(pns) - 1, len(pns))
