"""Small reference models that ship with muplify (demo, benchmarks, tests).

They are ordinary PyTorch code with ordinary PyTorch init: muplify gets no help from them.

    >>> from muplify.models import GPT
    >>> model = GPT(vocab_size=256, d_model=128, n_layer=2, n_head=4)
    >>> model(torch.randint(0, 256, (2, 16))).shape
    torch.Size([2, 16, 256])
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["GPT", "MLP", "CNN"]


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int, head_dim: int, attn: str, dropout: float, bias: bool):
        super().__init__()
        self.n_head, self.head_dim, self.attn, self.dropout = n_head, head_dim, attn, dropout
        self.c_attn = nn.Linear(d_model, 3 * n_head * head_dim, bias=bias)
        self.c_proj = nn.Linear(n_head * head_dim, d_model, bias=bias)
        self.attn_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.c_attn(x).split(self.n_head * self.head_dim, dim=2)
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))
        if self.attn == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        else:  # the textbook form: q @ k^T / sqrt(d) -> mask -> softmax
            att = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
            y = self.attn_drop(att) @ v
        return self.c_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class Block(nn.Module):
    def __init__(self, d_model: int, n_head: int, head_dim: int, attn: str, dropout: float, bias: bool, mlp_ratio: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model, bias=bias)
        self.attn = CausalSelfAttention(d_model, n_head, head_dim, attn, dropout, bias)
        self.ln_2 = nn.LayerNorm(d_model, bias=bias)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model, bias=bias),
            nn.GELU(),
            nn.Linear(mlp_ratio * d_model, d_model, bias=bias),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """A pre-LN decoder-only transformer in the style of nanoGPT.

    ``head_dim`` defaults to 32 and ``n_head = d_model // head_dim`` when ``n_head`` is not given, so widening the
    model adds heads (the modern convention).  ``init="gpt2"`` draws every matrix from N(0, 0.02) (GPT-2's fixed-std
    init); ``init="torch"`` keeps PyTorch's default fan-in init.
    """

    def __init__(
        self,
        vocab_size: int = 256,
        d_model: int = 128,
        n_layer: int = 2,
        n_head: int | None = None,
        head_dim: int | None = None,
        block_size: int = 256,
        attn: str = "sdpa",
        tie_weights: bool = True,
        dropout: float = 0.0,
        bias: bool = True,
        mlp_ratio: int = 4,
        init: str = "gpt2",
    ):
        super().__init__()
        if attn not in ("sdpa", "manual"):
            raise ValueError(f"attn must be 'sdpa' or 'manual', got {attn!r}")
        if n_head is None:
            head_dim = head_dim or 32
            n_head = max(1, d_model // head_dim)
        head_dim = head_dim or d_model // n_head
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, d_model)
        self.wpe = nn.Embedding(block_size, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(d_model, n_head, head_dim, attn, dropout, bias, mlp_ratio) for _ in range(n_layer)
        )
        self.ln_f = nn.LayerNorm(d_model, bias=bias)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        if tie_weights:
            self.lm_head.weight = self.wte.weight
        if init == "gpt2":
            for name, p in self.named_parameters():
                if p.dim() >= 2:
                    nn.init.normal_(p, std=0.02)
                elif name.endswith("bias"):
                    nn.init.zeros_(p)
        elif init != "torch":
            raise ValueError(f"init must be 'gpt2' or 'torch', got {init!r}")

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        T = idx.shape[1]
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())


class MLP(nn.Module):
    """``in_features -> width -> ... -> out_features`` with ReLU."""

    def __init__(self, in_features: int = 32, width: int = 128, out_features: int = 10, depth: int = 3, bias: bool = True):
        super().__init__()
        dims = [in_features] + [width] * (depth - 1) + [out_features]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b, bias=bias))
            if i < depth - 1:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """A small VGG-style CNN: conv stem, two stages (the second twice as wide), global pool, linear classifier."""

    def __init__(self, in_channels: int = 3, width: int = 32, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))
