"""Hand-written models of the kinds users write, where one width cannot see every fixed dim (tests/test_width.py,
tests/test_attention.py and benchmarks/beyond_zoo.py share them)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class LearnedQueries(nn.Module):
    """Attention whose queries are learned rows, not the input: a Perceiver's latent array added back as a residual
    (``residual=True``) or a set transformer's seed vectors (``False``), ``lat`` (1, n, w), through torch's
    nn.MultiheadAttention (its (L, B*H, hd) -> (B, H, L, hd) views split a merged batch again)."""

    def __init__(self, w: int, n: int = 5, residual: bool = True):
        super().__init__()
        self.residual = residual
        self.lat = nn.Parameter(torch.randn(1, n, w) * 0.02)
        self.inp = nn.Linear(12, w)
        self.attn = nn.MultiheadAttention(w, w // 16, batch_first=True)
        self.head = nn.Linear(w, 5)

    def forward(self, x):
        kv = self.inp(x)
        q = self.lat.expand(x.shape[0], -1, -1)
        h = self.attn(q, kv, kv, need_weights=False)[0]
        return self.head((q + h if self.residual else h).mean(1))


class VAE(nn.Module):
    """A conv VAE with a fixed 4-channel latent: (mu, logvar) = chunk(to_lat(h)), returned with the reconstruction."""

    def __init__(self, w: int):
        super().__init__()
        self.e1, self.e2 = nn.Conv2d(3, w, 4, 2, 1), nn.Conv2d(w, 2 * w, 4, 2, 1)
        self.to_lat, self.from_lat = nn.Conv2d(2 * w, 8, 1), nn.Conv2d(4, 2 * w, 1)
        self.d1, self.d2 = nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.ConvTranspose2d(w, 3, 4, 2, 1)

    def forward(self, x):
        mu, logvar = self.to_lat(F.relu(self.e2(F.relu(self.e1(x))))).chunk(2, dim=1)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return self.d2(F.relu(self.d1(F.relu(self.from_lat(z))))), mu, logvar


class FiLM(nn.Module):
    """A class embedding of its own size (16) conditions the hidden layer through a projection to scale/shift."""

    def __init__(self, w: int):
        super().__init__()
        self.cond, self.film = nn.Embedding(10, 16), nn.Linear(16, 2 * w)
        self.inp, self.hid, self.out = nn.Linear(8, w), nn.Linear(w, w), nn.Linear(w, 2)

    def forward(self, x, c):
        g, b = self.film(self.cond(c)).chunk(2, -1)
        return self.out(F.relu(self.hid(F.relu(self.inp(x))) * (1 + g) + b))


class LoRAMLP(nn.Module):
    """An MLP whose hidden layer has a rank-``r`` LoRA update ``B @ A`` (r fixed as the model widens)."""

    def __init__(self, w: int, r: int = 4):
        super().__init__()
        self.inp, self.base, self.out = nn.Linear(10, w), nn.Linear(w, w), nn.Linear(w, 3)
        self.A = nn.Parameter(torch.randn(r, w) / math.sqrt(w))
        self.B = nn.Parameter(torch.zeros(w, r))

    def forward(self, x):
        h = F.relu(self.inp(x))
        return self.out(F.relu(self.base(h) + h @ self.A.t() @ self.B.t()))


class DLRM(nn.Module):
    """A recommender of DLRM's shape: sparse features through ``nn.EmbeddingBag`` tables of a fixed size ``d_emb``,
    dense features through a bottom MLP to ``d_emb``, all concatenated into a top MLP of width ``w``."""

    def __init__(self, w: int, d_emb: int = 8, tables: int = 3):
        super().__init__()
        self.tabs = nn.ModuleList([nn.EmbeddingBag(100, d_emb, mode="sum") for _ in range(tables)])
        self.bot = nn.Sequential(nn.Linear(13, w), nn.ReLU(), nn.Linear(w, d_emb))
        self.top = nn.Sequential(nn.Linear(d_emb * (tables + 1), w), nn.ReLU(), nn.Linear(w, 1))

    def forward(self, dense, idx):
        return self.top(torch.cat([self.bot(dense)] + [t(idx[:, i]) for i, t in enumerate(self.tabs)], 1))
