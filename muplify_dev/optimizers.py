"""Optimizers the tests and benchmarks need that torch does not ship."""
from __future__ import annotations

import torch


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023): update = sign(β1·m + (1−β1)·g), decoupled weight decay, m ← β2·m + (1−β2)·g.

    Written with foreach ops (the benchmarks time it).  muplify has no built-in rule for it: a test registers it
    (``register_rule(Lion, "sign")``) or passes ``rule=`` and unregisters it afterwards."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for g in self.param_groups:
            ps = [p for p in g["params"] if p.grad is not None]
            if not ps:
                continue
            grads = [p.grad for p in ps]
            ms = [self.state[p].setdefault("m", torch.zeros_like(p)) for p in ps]
            b1, b2 = g["betas"]
            torch._foreach_mul_(ps, 1 - g["lr"] * g["weight_decay"])
            upd = torch._foreach_lerp(grads, ms, b1)  # b1·m + (1−b1)·g
            torch._foreach_sign_(upd)
            torch._foreach_add_(ps, upd, alpha=-g["lr"])
            torch._foreach_lerp_(ms, grads, 1 - b2)
        return loss
