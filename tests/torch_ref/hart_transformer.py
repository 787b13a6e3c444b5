"""HART's `llm/` model (`HARTForT2I`) as a torch reference, written from
hart_spec.md 2.2-2.5 and 4a without the official code.

`HARTForT2IRef(config_dict, vocab_size)` takes the official llm
config.json content and builds a module tree whose `state_dict()` keys,
shapes and persistent buffers are those of the official model (the
diffusion head `diffloss.net.*` included), so a strict `load_state_dict`
checks an exporter's key set, and `forward` is the official teacher-forced
forward's logits (`logits[:, context_token - 1:]`, no token dropping, no
condition dropout), which the golden vectors confirm for the released
flags and the per-block AdaLN variant. Covered flags: llama attention and
MLP; per-block, shared or no AdaLN; learned or timestep level embedding;
with or without context norm. Float32 throughout.
"""

import math
from typing import Any, Mapping

import torch
from torch import nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
  """w * x / sqrt(mean(x^2) + eps), statistics in float32."""

  def __init__(self, dim: int, eps: float):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(dim))
    self.eps = eps

  def forward(self, x):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * (
        self.weight)


class TimestepEmbedder(nn.Module):
  """[cos | sin] of t * exp(-ln(1e4) i / 128), then Linear-SiLU-Linear."""

  def __init__(self, width: int, freq: int = 256):
    super().__init__()
    self.freq = freq
    self.mlp = nn.Sequential(nn.Linear(freq, width), nn.SiLU(),
                             nn.Linear(width, width))

  def forward(self, t):
    half = self.freq // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(
        half, dtype=torch.float32) / half)
    args = t.float()[..., None] * freqs
    return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], -1))


def rotate(x, cos, sin):
  """x * cos + rotate_half(x) * sin, tables [B, S, hd] over [B, H, S, hd]."""
  half = x.shape[-1] // 2
  rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
  return x * cos[:, None] + rotated * sin[:, None]


def rope_tables(position_ids, patch_nums, head_dim):
  """cos, sin [B, S, hd]: 1-D RoPE on the context, HART's 2-D quirk on the
  image tokens of scales 1..K-1 (hart_spec.md 2.5)."""
  inv1 = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim))
  f1 = position_ids.float()[..., None] * inv1
  ctx = torch.cat([f1, f1], -1)
  inv2 = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 4).float() / head_dim))
  last = patch_nums[-1]
  rows, cols = [], []
  for pn in patch_nums[1:]:
    steps = torch.arange(pn).float() / pn * last
    ii, jj = torch.meshgrid(steps, steps, indexing="ij")
    rows.append(ii.reshape(-1))
    cols.append(jj.reshape(-1))
  offset = position_ids[:, -1].float()[:, None, None]
  r = (torch.cat(rows)[None, :, None] + offset) * inv2
  c = (torch.cat(cols)[None, :, None] + offset) * inv2
  img = torch.cat([r, r, c, c], -1)
  emb = torch.cat([ctx, img], 1)
  return torch.cos(emb), torch.sin(emb)


class LlamaAttention(nn.Module):
  """qkv_proj (no bias) + [q_bias, zero_k_bias, v_bias], scale 0.25/sqrt(hd)."""

  def __init__(self, dim: int, heads: int):
    super().__init__()
    self.heads = heads
    self.qkv_proj = nn.Linear(dim, 3 * dim, bias=False)
    self.q_bias = nn.Parameter(torch.zeros(dim))
    self.v_bias = nn.Parameter(torch.zeros(dim))
    self.register_buffer("zero_k_bias", torch.zeros(dim))
    self.proj = nn.Linear(dim, dim)

  def forward(self, x, cos, sin, bias):
    b, length, dim = x.shape
    hd = dim // self.heads
    qkv = F.linear(x, self.qkv_proj.weight, torch.cat(
        [self.q_bias, self.zero_k_bias, self.v_bias]))
    q, k, v = qkv.view(b, length, 3, self.heads, hd).permute(
        2, 0, 3, 1, 4).unbind(0)
    q, k = rotate(q, cos, sin), rotate(k, cos, sin)
    scores = q @ k.transpose(-1, -2) * (0.25 / math.sqrt(hd)) + bias
    out = scores.softmax(-1) @ v
    return self.proj(out.transpose(1, 2).reshape(b, length, dim))


class LlamaMLP(nn.Module):

  def __init__(self, dim: int, hidden: int):
    super().__init__()
    self.gate_proj = nn.Linear(dim, hidden, bias=False)
    self.up_proj = nn.Linear(dim, hidden, bias=False)
    self.down_proj = nn.Linear(hidden, dim, bias=False)

  def forward(self, x):
    return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class AdaLNSelfAttn(nn.Module):
  """Pre-norm block; AdaLN chunks (g1, g2, s1, s2, b1, b2) when enabled."""

  def __init__(self, cfg: Mapping[str, Any], dim: int, hidden: int):
    super().__init__()
    self.cfg = cfg
    self.attn = LlamaAttention(dim, cfg["num_heads"])
    self.ffn = LlamaMLP(dim, hidden)
    self.ln_wo_grad = RMSNorm(dim, cfg["norm_eps"])
    if not cfg["disable_aln"]:
      self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
    elif cfg["shared_aln"]:
      self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)

  def forward(self, x, cond, mask, cos, sin, bias):
    cfg, norm = self.cfg, self.ln_wo_grad
    if not cfg["disable_aln"]:
      pooled = (cond.max(1).values if cfg["sep_aln_pooling_mode"] == "max"
                else _masked_mean(cond, mask))
      mod = self.ada_lin(pooled).view(-1, 1, 6, x.shape[-1])
    elif cfg["shared_aln"]:
      mod = (self.scale_shift_table[None]
             + _masked_mean(cond, mask)[:, None])[:, None]
    else:
      x = x + self.attn(norm(x), cos, sin, bias)
      return x + self.ffn(norm(x))
    g1, g2, s1, s2, b1, b2 = mod.unbind(2)
    x = x + g1 * self.attn(norm(x) * (1 + s1) + b1, cos, sin, bias)
    return x + g2 * self.ffn(norm(x) * (1 + s2) + b2)


def _masked_mean(tokens, mask):
  m = mask.float()[..., None]
  return (tokens * m).sum(1) / m.sum(1).clamp(min=1)


class AdaLNBeforeHead(nn.Module):

  def __init__(self, dim: int, eps: float):
    super().__init__()
    self.ln_wo_grad = RMSNorm(dim, eps)
    self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

  def forward(self, x, cond):
    scale, shift = self.ada_lin(cond.max(1).values).view(
        -1, 1, 2, x.shape[-1]).unbind(2)
    return self.ln_wo_grad(x) * (1 + scale) + shift


class ResBlock(nn.Module):
  """SimpleMLPAdaLN's block (parameters only: the logits do not use it)."""

  def __init__(self, w: int):
    super().__init__()
    self.in_ln = nn.LayerNorm(w, eps=1e-6)
    self.mlp = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
    self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(w, 3 * w))


class FinalLayer(nn.Module):

  def __init__(self, w: int, out: int):
    super().__init__()
    self.norm_final = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
    self.linear = nn.Linear(w, out)
    self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(w, 2 * w))


class SimpleMLPAdaLN(nn.Module):
  """The diffusion head's parameter tree (`diffloss.net`)."""

  def __init__(self, in_ch: int, w: int, cond: int, depth: int):
    super().__init__()
    self.time_embed = TimestepEmbedder(w)
    self.cond_embed = nn.Linear(cond, w)
    self.input_proj = nn.Linear(in_ch, w)
    self.res_blocks = nn.ModuleList([ResBlock(w) for _ in range(depth)])
    self.final_layer = FinalLayer(w, 2 * in_ch)


class DiffLoss(nn.Module):

  def __init__(self, in_ch: int, w: int, cond: int, depth: int):
    super().__init__()
    self.net = SimpleMLPAdaLN(in_ch, w, cond, depth)


class HARTForT2IRef(nn.Module):
  """The official transformer's module tree and teacher-forced logits."""

  def __init__(self, cfg: Mapping[str, Any], vocab_size: int,
               latent_channels: int = 32):
    super().__init__()
    assert cfg["attn_type"] == cfg["mlp_type"] == "llama", cfg
    self.cfg = dict(cfg)
    dim, k = cfg["embed_dim"], len(cfg["patch_nums"])
    hidden = int((dim * cfg["mlp_ratio"] * 2) / 3 + 255) // 256 * 256
    self.word_embed = nn.Linear(latent_channels, dim)
    self.context_embed = nn.Linear(cfg["context_dim"], dim)
    if cfg["use_context_norm"]:
      self.context_norm = RMSNorm(cfg["context_dim"], cfg["norm_eps"])
    self.lvl_embed = (TimestepEmbedder(dim) if cfg["use_timestep_embed"]
                      else nn.Embedding(k, dim))
    self.blocks = nn.ModuleList([AdaLNSelfAttn(cfg, dim, hidden)
                                 for _ in range(cfg["depth"])])
    self.head_nm = AdaLNBeforeHead(dim, cfg["norm_eps"])
    self.head = nn.Linear(dim, vocab_size)
    self.decoder_norm = RMSNorm(dim, cfg["norm_eps"])
    self.diffloss = DiffLoss(latent_channels, cfg["diff_width"], dim,
                             cfg["diff_depth"])
    levels = [0] * cfg["context_token"]
    for i, pn in enumerate(cfg["patch_nums"][1:]):
      levels += [i + 1] * pn * pn
    lvl = torch.tensor(levels, dtype=torch.int64)[None]
    self.register_buffer("lvl_1L", lvl)
    bias = torch.where(lvl[0][:, None] >= lvl[0][None, :], 0.0, -torch.inf)
    self.register_buffer("attn_bias_for_masking", bias[None, None])

  def forward(self, context, context_mask, position_ids, var_input):
    """Teacher-forced logits [B, L, V] (from the last context slot on)."""
    cfg = self.cfg
    ctx = context.float()
    if cfg["use_context_norm"]:
      ctx = self.context_norm(ctx)
    cond = self.context_embed(ctx)
    x = torch.cat([cond, self.word_embed(var_input.float())], 1)
    levels = self.lvl_1L[0]
    x = x + self.lvl_embed(levels.float() if cfg["use_timestep_embed"]
                           else levels)[None]
    cos, sin = rope_tables(position_ids, cfg["patch_nums"],
                           cfg["embed_dim"] // cfg["num_heads"])
    for block in self.blocks:
      x = block(x, cond, context_mask, cos, sin, self.attn_bias_for_masking)
    h = self.head_nm(x[:, cfg["context_token"] - 1:], cond)
    return self.head(h)
