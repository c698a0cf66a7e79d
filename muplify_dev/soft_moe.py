"""Soft mixtures of experts: a router ``Linear(w, E)`` whose softmax over the E experts weights the sum of every
expert's output -- no top-k, so no selection op marks the expert axis.  The router is output-like (its fan-out is
the expert count), but not the readout: ``output_mult`` must not reach it (tests/test_roles_agree.py)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class SoftMoE(nn.Module):
    """Token MLP of ``experts`` experts mixed by a dense softmax gate, then a readout ``Linear(w, out)``.

    ``mix``: ``"stack"`` (expert outputs stacked on an expert axis, gate-weighted, summed over it), ``"einsum"``
    (the same as one contraction of the gates with the stack; inputs (batch, tokens, d_in)) or ``"loop"``
    (``sum(gate[..., e:e+1] * expert_e(h))``).
    """

    def __init__(self, w: int, experts: int = 4, d_in: int = 8, out: int = 3, mix: str = "stack"):
        super().__init__()
        self.mix = mix
        self.inp = nn.Linear(d_in, w)
        self.router = nn.Linear(w, experts, bias=False)
        self.up = nn.ModuleList([nn.Linear(w, 2 * w) for _ in range(experts)])
        self.down = nn.ModuleList([nn.Linear(2 * w, w) for _ in range(experts)])
        self.head = nn.Linear(w, out)

    def forward(self, x):
        h = F.relu(self.inp(x))
        gates = self.router(h).softmax(-1)  # (..., E)
        outs = [down(F.gelu(up(h))) for up, down in zip(self.up, self.down)]
        if self.mix == "stack":
            mixed = (gates.unsqueeze(-1) * torch.stack(outs, dim=-2)).sum(-2)
        elif self.mix == "einsum":
            mixed = torch.einsum("bte,bted->btd", gates, torch.stack(outs, dim=-2))
        else:
            mixed = sum(gates[..., e:e + 1] * o for e, o in enumerate(outs))
        return self.head(h + mixed)


class SoftmaxClassifier(nn.Module):
    """An MLP classifier whose output is the class probabilities (a readout's softmax, not a router's)."""

    def __init__(self, w: int, d_in: int = 8, classes: int = 4):
        super().__init__()
        self.inp, self.hid, self.head = nn.Linear(d_in, w), nn.Linear(w, w), nn.Linear(w, classes)

    def forward(self, x):
        return self.head(F.relu(self.hid(F.relu(self.inp(x))))).softmax(-1)
