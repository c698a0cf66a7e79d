"""Language models whose K/V heads may stay fixed while the query heads scale: one width cannot tell a fixed K/V
axis from one that scales (its size is the same at every width), so these exercise the roles read from two widths
(tests/test_roles_agree.py, benchmarks/beyond_zoo.py)."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F


class GQALM(nn.Module):
    """Llama-style grouped-query attention with heads of ``head_dim``: ``kv_heads`` K/V heads, fixed, or (None)
    half the query heads, growing with width (one K/V head at width 64)."""

    def __init__(self, w: int, kv_heads: int | None = None, head_dim: int = 32, vocab: int = 128):
        super().__init__()
        self.h, self.hd = w // head_dim, head_dim
        self.kv = kv_heads or max(1, self.h // 2)
        self.emb = nn.Embedding(vocab, w)
        self.q = nn.Linear(w, self.h * head_dim, bias=False)
        self.k = nn.Linear(w, self.kv * head_dim, bias=False)
        self.v = nn.Linear(w, self.kv * head_dim, bias=False)
        self.o = nn.Linear(w, w, bias=False)
        self.norm = nn.RMSNorm(w)
        self.head = nn.Linear(w, vocab, bias=False)

    def forward(self, ids):
        x = self.emb(ids)
        B, T, C = x.shape
        q = self.q(x).view(B, T, self.h, self.hd).transpose(1, 2)
        k = self.k(x).view(B, T, self.kv, self.hd).transpose(1, 2).repeat_interleave(self.h // self.kv, 1)
        v = self.v(x).view(B, T, self.kv, self.hd).transpose(1, 2).repeat_interleave(self.h // self.kv, 1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.o(a)
        return self.head(self.norm(x))


class MQAFusedLM(nn.Module):
    """Falcon-style multi-query attention: one fused qkv whose Q rows scale and whose K/V rows are one head."""

    def __init__(self, w: int, head_dim: int = 16, vocab: int = 128):
        super().__init__()
        self.h, self.hd = w // head_dim, head_dim
        self.emb = nn.Embedding(vocab, w)
        self.qkv = nn.Linear(w, w + 2 * head_dim, bias=False)
        self.o = nn.Linear(w, w, bias=False)
        self.head = nn.Linear(w, vocab, bias=False)

    def forward(self, ids):
        x = self.emb(ids)
        B, T, C = x.shape
        q, k, v = self.qkv(x).split([C, self.hd, self.hd], dim=-1)
        q = q.view(B, T, self.h, self.hd).transpose(1, 2)
        k = k.view(B, T, 1, self.hd).transpose(1, 2).expand(B, self.h, T, self.hd)
        v = v.view(B, T, 1, self.hd).transpose(1, 2).expand(B, self.h, T, self.hd)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        return self.head(x + self.o(a))
