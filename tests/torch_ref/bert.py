"""A plain-torch BERT encoder with the Hugging Face key names (test-only).

Written from the BERT paper's post-LayerNorm block (exact GELU, additive
mask of the dtype's minimum on padded keys), independently of hart_jax, so
that hart_jax.text.bert can be checked against it with random or real
weights.
"""

import math

import torch
from torch import nn


class _Attention(nn.Module):

  def __init__(self, hidden, heads, eps):
    super().__init__()
    self.self = nn.Module()
    self.self.query = nn.Linear(hidden, hidden)
    self.self.key = nn.Linear(hidden, hidden)
    self.self.value = nn.Linear(hidden, hidden)
    self.output = nn.Module()
    self.output.dense = nn.Linear(hidden, hidden)
    self.output.LayerNorm = nn.LayerNorm(hidden, eps=eps)
    self.heads = heads

  def forward(self, x, bias):
    b, t, d = x.shape
    split = lambda y: y.view(b, t, self.heads, d // self.heads).transpose(1, 2)
    q, k, v = (split(m(x)) for m in (self.self.query, self.self.key,
                                      self.self.value))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads) + bias
    att = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
    return self.output.LayerNorm(x + self.output.dense(att))


class _Layer(nn.Module):

  def __init__(self, hidden, heads, inter, eps):
    super().__init__()
    self.attention = _Attention(hidden, heads, eps)
    self.intermediate = nn.Module()
    self.intermediate.dense = nn.Linear(hidden, inter)
    self.output = nn.Module()
    self.output.dense = nn.Linear(inter, hidden)
    self.output.LayerNorm = nn.LayerNorm(hidden, eps=eps)

  def forward(self, x, bias):
    x = self.attention(x, bias)
    h = nn.functional.gelu(self.intermediate.dense(x))
    return self.output.LayerNorm(x + self.output.dense(h))


class BertRef(nn.Module):
  """ids [B, T] (long), mask [B, T] (bool) -> last hidden [B, T, hidden]."""

  def __init__(self, vocab=30522, hidden=384, layers=6, heads=12,
               inter=1536, positions=512, types=2, eps=1e-12):
    super().__init__()
    self.embeddings = nn.Module()
    self.embeddings.word_embeddings = nn.Embedding(vocab, hidden)
    self.embeddings.position_embeddings = nn.Embedding(positions, hidden)
    self.embeddings.token_type_embeddings = nn.Embedding(types, hidden)
    self.embeddings.LayerNorm = nn.LayerNorm(hidden, eps=eps)
    self.encoder = nn.Module()
    self.encoder.layer = nn.ModuleList(
        [_Layer(hidden, heads, inter, eps) for _ in range(layers)])

  def forward(self, ids, mask):
    e = self.embeddings
    pos = torch.arange(ids.shape[1])
    x = e.LayerNorm(e.word_embeddings(ids) + e.position_embeddings(pos)
                    + e.token_type_embeddings(torch.zeros_like(ids)))
    bias = torch.where(mask[:, None, None, :], 0.0,
                       torch.finfo(torch.float32).min)
    for layer in self.encoder.layer:
      x = layer(x, bias)
    return x
