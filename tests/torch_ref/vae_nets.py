"""Encoder and decoder of HART's tokenizer, as a plain torch reference.

Attribute names and nesting follow the official `basic_vae.py` exactly
(`down.{l}.block.{b}.norm1`, `mid.attn_1.qkv`, `up.{l}.upsample.conv`, ...)
so that an official state dict loads with `strict=True`. The code inside
each module is written independently (hart_spec.md section 3).
"""

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F


def group_norm(channels: int) -> nn.GroupNorm:
  # HART (like taming/LDM) uses 32 groups and eps 1e-6, not torch's 1e-5.
  return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


def conv3x3(c_in: int, c_out: int, stride: int = 1,
            padding: int = 1) -> nn.Conv2d:
  return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=padding)


class ResnetBlock(nn.Module):
  """GN-SiLU-conv twice, plus a 1x1 `nin_shortcut` if the width changes."""

  def __init__(self, c_in: int, c_out: int):
    super().__init__()
    self.norm1 = group_norm(c_in)
    self.conv1 = conv3x3(c_in, c_out)
    self.norm2 = group_norm(c_out)
    self.conv2 = conv3x3(c_out, c_out)
    # Only registered when needed: the official key set has no shortcut
    # weights for width-preserving blocks.
    if c_in != c_out:
      self.nin_shortcut = nn.Conv2d(c_in, c_out, 1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    h = self.conv1(F.silu(self.norm1(x)))
    h = self.conv2(F.silu(self.norm2(h)))  # dropout is 0 (inference)
    skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
    return skip + h


class AttnBlock(nn.Module):
  """Single-head spatial self-attention with one fused 1x1 qkv conv."""

  def __init__(self, channels: int):
    super().__init__()
    self.norm = group_norm(channels)
    self.qkv = nn.Conv2d(channels, 3 * channels, 1)
    self.proj_out = nn.Conv2d(channels, channels, 1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, c, hh, ww = x.shape
    # qkv channels are laid out [q | k | v], each c wide.
    q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, hh * ww).unbind(1)
    logits = torch.einsum("bci,bcj->bij", q, k) * c ** -0.5
    attn = logits.softmax(dim=-1)  # over key positions j
    out = torch.einsum("bij,bcj->bci", attn, v).reshape(b, c, hh, ww)
    return x + self.proj_out(out)


class Downsample2x(nn.Module):
  """Asymmetric pad (right/bottom by one), then a 3x3 stride-2 conv."""

  def __init__(self, channels: int):
    super().__init__()
    self.conv = conv3x3(channels, channels, stride=2, padding=0)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample2x(nn.Module):
  """Nearest-neighbour x2, then a 3x3 conv."""

  def __init__(self, channels: int):
    super().__init__()
    self.conv = conv3x3(channels, channels)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _level(blocks, attns, resample_name=None, resample=None) -> nn.Module:
  """A bare container with the official `block` / `attn` / resample names."""
  level = nn.Module()
  level.block = nn.ModuleList(blocks)
  level.attn = nn.ModuleList(attns)
  if resample is not None:
    setattr(level, resample_name, resample)
  return level


def _mid(channels: int) -> nn.Module:
  mid = nn.Module()
  mid.block_1 = ResnetBlock(channels, channels)
  mid.attn_1 = AttnBlock(channels)
  mid.block_2 = ResnetBlock(channels, channels)
  return mid


def _run_level(level: nn.Module, h: torch.Tensor) -> torch.Tensor:
  # Attention (lowest level only) follows each residual block.
  for i, block in enumerate(level.block):
    h = block(h)
    if len(level.attn):
      h = level.attn[i](h)
  return h


def _run_mid(mid: nn.Module, h: torch.Tensor) -> torch.Tensor:
  return mid.block_2(mid.attn_1(mid.block_1(h)))


class Encoder(nn.Module):
  """Image [B, 3, H, W] -> features [B, z, H/f, W/f], f = 2**(levels-1)."""

  def __init__(self, ch: int, ch_mult: Sequence[int], z_channels: int,
               num_res_blocks: int = 2, in_channels: int = 3):
    super().__init__()
    self.conv_in = conv3x3(in_channels, ch)
    widths = [ch * m for m in ch_mult]
    self.down = nn.ModuleList()
    c_in = ch
    for lvl, c_out in enumerate(widths):
      lowest = lvl == len(widths) - 1
      blocks, attns = [], []
      for _ in range(num_res_blocks):
        blocks.append(ResnetBlock(c_in, c_out))
        c_in = c_out
        if lowest:
          attns.append(AttnBlock(c_out))
      self.down.append(_level(blocks, attns, "downsample",
                              None if lowest else Downsample2x(c_out)))
    self.mid = _mid(c_in)
    self.norm_out = group_norm(c_in)
    self.conv_out = conv3x3(c_in, z_channels)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    h = self.conv_in(x)
    for level in self.down:
      h = _run_level(level, h)
      if hasattr(level, "downsample"):
        h = level.downsample(h)
    h = _run_mid(self.mid, h)
    return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
  """Latent [B, z, h, w] -> image [B, 3, h*f, w*f] (unclamped)."""

  def __init__(self, ch: int, ch_mult: Sequence[int], z_channels: int,
               num_res_blocks: int = 2, out_channels: int = 3):
    super().__init__()
    widths = [ch * m for m in ch_mult]
    c_in = widths[-1]
    self.conv_in = conv3x3(z_channels, c_in)
    self.mid = _mid(c_in)
    # Built from the lowest resolution up, but stored by level index so
    # that `up.{l}` is level l (the official prepends while building).
    levels = {}
    for lvl in reversed(range(len(widths))):
      c_out = widths[lvl]
      blocks, attns = [], []
      for _ in range(num_res_blocks + 1):  # one more than the encoder
        blocks.append(ResnetBlock(c_in, c_out))
        c_in = c_out
        if lvl == len(widths) - 1:
          attns.append(AttnBlock(c_out))
      levels[lvl] = _level(blocks, attns, "upsample",
                           Upsample2x(c_out) if lvl else None)
    self.up = nn.ModuleList([levels[i] for i in range(len(widths))])
    self.norm_out = group_norm(c_in)
    self.conv_out = conv3x3(c_in, out_channels)

  def forward(self, z: torch.Tensor) -> torch.Tensor:
    h = _run_mid(self.mid, self.conv_in(z))
    for level in reversed(self.up):
      h = _run_level(level, h)
      if hasattr(level, "upsample"):
        h = level.upsample(h)
    return self.conv_out(F.silu(self.norm_out(h)))
