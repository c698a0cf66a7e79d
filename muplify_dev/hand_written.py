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


def _freqs_cis(dim: int, end: int) -> torch.Tensor:
    freqs = 1.0 / (10000.0 ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    return torch.polar(torch.ones(end, dim // 2), torch.outer(torch.arange(end), freqs).float())


class MetaLlama(nn.Module):
    """One block of Meta's reference Llama: rotary embedding through ``view_as_complex`` / ``view_as_real``,
    RMSNorm by ``rsqrt``, SwiGLU with separate w1/w3."""

    def __init__(self, w: int, head_dim: int = 16, max_len: int = 16, vocab: int = 100):
        super().__init__()
        self.h, self.hd = w // head_dim, head_dim
        self.tok = nn.Embedding(vocab, w)
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(w, w, bias=False) for _ in range(4))
        self.w1, self.w3 = nn.Linear(w, 3 * w, bias=False), nn.Linear(w, 3 * w, bias=False)
        self.w2 = nn.Linear(3 * w, w, bias=False)
        self.g1, self.g2, self.gf = (nn.Parameter(torch.ones(w)) for _ in range(3))
        self.out = nn.Linear(w, vocab, bias=False)
        self.register_buffer("freqs_cis", _freqs_cis(head_dim, max_len), persistent=False)

    @staticmethod
    def _norm(x, g):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * g

    def _rotary(self, x, fc):
        xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(xc * fc.view(1, xc.shape[1], 1, xc.shape[-1])).flatten(3).type_as(x)

    def forward(self, t):
        b, n = t.shape
        h = self.tok(t)
        x = self._norm(h, self.g1)
        q, k, v = (p(x).view(b, n, self.h, self.hd) for p in (self.wq, self.wk, self.wv))
        fc = self.freqs_cis[:n]
        q, k = self._rotary(q, fc), self._rotary(k, fc)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        h = h + self.wo(a.transpose(1, 2).reshape(b, n, -1))
        x = self._norm(h, self.g2)
        h = h + self.w2(F.silu(self.w1(x)) * self.w3(x))
        return self.out(self._norm(h, self.gf))


class FFTLongConv(nn.Module):
    """A Hyena-style long convolution: a learned (w, L) filter applied by ``rfft`` / ``irfft`` over the positions."""

    def __init__(self, w: int, length: int = 16):
        super().__init__()
        self.inp, self.out = nn.Linear(4, w), nn.Linear(w, 2)
        self.k = nn.Parameter(torch.randn(w, length) * 0.1)
        self.skip = nn.Parameter(torch.ones(w))

    def forward(self, x):
        u = self.inp(x).transpose(1, 2)
        n = u.shape[-1]
        y = torch.fft.irfft(torch.fft.rfft(u, n=2 * n) * torch.fft.rfft(self.k[:, :n], n=2 * n), n=2 * n)[..., :n]
        return self.out((y + u * self.skip[:, None]).transpose(1, 2))


class FNet(nn.Module):
    """FNet's token mixing: ``fft`` over the hidden axis then the positions, real part (the hidden axis keeps its
    length: it stays the width)."""

    def __init__(self, w: int, vocab: int = 40):
        super().__init__()
        self.emb, self.ln, self.out = nn.Embedding(vocab, w), nn.LayerNorm(w), nn.Linear(w, vocab)
        self.ff = nn.Sequential(nn.Linear(w, 4 * w), nn.GELU(), nn.Linear(4 * w, w))

    def forward(self, t):
        h = self.emb(t)
        h = self.ln(h + torch.fft.fft(torch.fft.fft(h, dim=-1), dim=-2).real)
        return self.out(h + self.ff(h))


class SubPixelSR(nn.Module):
    """Super-resolution by sub-pixel convolution: the last conv's 3·r² channels go to space by ``PixelShuffle``."""

    def __init__(self, w: int, r: int = 2):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, w, 3, padding=1), nn.Conv2d(w, w, 3, padding=1)
        self.up, self.shuffle = nn.Conv2d(w, 3 * r * r, 3, padding=1), nn.PixelShuffle(r)

    def forward(self, x):
        return self.shuffle(self.up(F.relu(self.c2(F.relu(self.c1(x))))))


class UnfoldPatches(nn.Module):
    """Patches by ``F.unfold`` (im2col), projected to the width, mixed, pooled, classified."""

    def __init__(self, w: int, patch: int = 4):
        super().__init__()
        self.patch = patch
        self.proj, self.mix, self.head = nn.Linear(3 * patch * patch, w), nn.Linear(w, w), nn.Linear(w, 5)

    def forward(self, x):
        p = F.unfold(x, self.patch, stride=self.patch).transpose(1, 2)
        return self.head(F.gelu(self.mix(F.gelu(self.proj(p)))).mean(1))
