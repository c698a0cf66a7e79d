"""A small real training task the tune tests and benchmarks share: full-batch regression of four smooth targets of
eight inputs, for ``muplify.models.MLP(in_features=8, out_features=4)``."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def regression_data(seed: int = 0, n: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = torch.stack([x[:, :4].sum(1).sin(), x[:, 4:].prod(1), x[:, 0] * x[:, 1], x[:, 7].cos()], 1)
    return x, y


def fit_regression(model, optimizer, report, seed: int = 0, steps: int = 6, n: int = 48) -> float:
    """``steps`` full-batch steps on the data of ``seed``, each loss reported; returns the loss after the last."""
    x, y = regression_data(seed, n)
    for s in range(steps):
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        report(s, loss.item())
    with torch.no_grad():
        return F.mse_loss(model(x), y).item()
