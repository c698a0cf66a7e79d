"""Property tests (hypothesis) over random small architectures.

For random MLPs, CNNs, built-in GPTs and hand-written transformer blocks (GLU or GELU MLP, RMSNorm or LayerNorm,
``nn.Linear`` or an (in, out)-layout linear computed as ``x @ W``):

* the roles muplify infers from the graph equal the two-width shape-diff oracle (muplify_dev/oracle.py);
* base-width identity: at width == base_width the muplified model computes (and takes an AdamW step) exactly as the
  original;
* determinism: muplifying the same model twice gives the identical plan JSON (and identical rescaled weights).

Bounded for CPU CI: tiny models, 20 examples per property, no deadline, no example database.
"""
from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable
from unittest import mock

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from muplify_dev import oracle
from muplify import muplify
from muplify.models import GPT, MLP
from muplify.rewrite import MuScale

HEAD_DIM = 16
VOCAB = 64
SEQ = 8


# ------------------------------------------------------------------------------------------------ architectures
class CNN(nn.Module):
    def __init__(self, width: int, n_conv: int, kernel: int, bn: bool, n_classes: int = 5):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for _ in range(n_conv):
            layers.append(nn.Conv2d(c_in, width, kernel, padding=kernel // 2, bias=not bn))
            if bn:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU())
            c_in = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


class InOutLinear(nn.Module):
    """A linear layer stored (in, out) and applied as ``x @ W + b`` (HF Conv1D-like layout, no nn.Linear)."""

    def __init__(self, fin: int, fout: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(fin, fout) / math.sqrt(fin))
        self.bias = nn.Parameter(torch.zeros(fout)) if bias else None

    def forward(self, x):
        y = x @ self.weight
        return y + self.bias if self.bias is not None else y


class Attention(nn.Module):
    def __init__(self, width: int, lin: Callable[[int, int], nn.Module]):
        super().__init__()
        self.q, self.k, self.v, self.o = lin(width, width), lin(width, width), lin(width, width), lin(width, width)

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = (m(x).view(B, T, -1, HEAD_DIM).transpose(1, 2) for m in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):
    def __init__(self, width: int, ratio: int, glu: bool, lin):
        super().__init__()
        self.glu = glu
        self.up, self.down = lin(width, ratio * width), lin(ratio * width, width)
        self.gate = lin(width, ratio * width) if glu else None

    def forward(self, x):
        h = F.silu(self.gate(x)) * self.up(x) if self.glu else F.gelu(self.up(x))
        return self.down(h)


class Block(nn.Module):
    def __init__(self, width, ratio, glu, norm, lin):
        super().__init__()
        mk = (lambda: nn.RMSNorm(width)) if norm == "rms" else (lambda: nn.LayerNorm(width))
        self.n1, self.attn, self.n2, self.ff = mk(), Attention(width, lin), mk(), FeedForward(width, ratio, glu, lin)

    def forward(self, x):
        x = x + self.attn(self.n1(x))
        return x + self.ff(self.n2(x))


class TinyLM(nn.Module):
    def __init__(self, width: int, n_layer: int, ratio: int, glu: bool, norm: str, layout: str, bias: bool):
        super().__init__()
        lin = (lambda a, b: nn.Linear(a, b, bias=bias)) if layout == "out_in" else (lambda a, b: InOutLinear(a, b, bias))
        self.embed = nn.Embedding(VOCAB, width)
        self.blocks = nn.ModuleList(Block(width, ratio, glu, norm, lin) for _ in range(n_layer))
        self.norm = nn.RMSNorm(width) if norm == "rms" else nn.LayerNorm(width)
        self.readout = lin(width, VOCAB)

    def forward(self, idx):
        x = self.embed(idx)
        for b in self.blocks:
            x = b(x)
        return self.readout(self.norm(x))


def _inout_layout(module, attr, param):
    if isinstance(module, InOutLinear) and attr == "weight":
        return (0,), (1,)
    return _ORIG_LAYOUT(module, attr, param)


_ORIG_LAYOUT = oracle.param_layout


@contextmanager
def _oracle_knows_inout():
    with mock.patch.object(oracle, "param_layout", _inout_layout):
        yield


# ------------------------------------------------------------------------------------------------ families
@dataclass
class Family:
    config: st.SearchStrategy  # dict of architecture options
    widths: st.SearchStrategy  # allowed widths
    make: Callable[[dict, int], nn.Module]
    inputs: Callable[[dict], tuple]


def _tokens():
    return (torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0)),)


FAMILIES = {
    "mlp": Family(
        st.fixed_dictionaries({"depth": st.integers(2, 4), "bias": st.booleans()}),
        st.sampled_from(range(16, 65, 8)),
        lambda c, w: MLP(in_features=12, width=w, out_features=5, depth=c["depth"], bias=c["bias"]),
        lambda c: (torch.randn(3, 12, generator=torch.Generator().manual_seed(0)),),
    ),
    "cnn": Family(
        st.fixed_dictionaries({"n_conv": st.integers(1, 3), "kernel": st.sampled_from([1, 3]), "bn": st.booleans()}),
        st.sampled_from(range(16, 65, 8)),
        lambda c, w: CNN(w, c["n_conv"], c["kernel"], c["bn"]),
        lambda c: (torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0)),),
    ),
    "gpt": Family(
        st.fixed_dictionaries({"tie": st.booleans(), "attn": st.sampled_from(["sdpa", "manual"]),
                               "bias": st.booleans(), "mlp_ratio": st.integers(2, 4), "n_layer": st.integers(1, 2)}),
        st.sampled_from([16, 32, 48, 64]),
        lambda c, w: GPT(vocab_size=VOCAB, d_model=w, n_layer=c["n_layer"], n_head=w // HEAD_DIM, head_dim=HEAD_DIM,
                         block_size=16, attn=c["attn"], tie_weights=c["tie"], bias=c["bias"],
                         mlp_ratio=c["mlp_ratio"]),
        lambda c: _tokens(),
    ),
    "block": Family(
        st.fixed_dictionaries({"glu": st.booleans(), "norm": st.sampled_from(["layer", "rms"]),
                               "layout": st.sampled_from(["out_in", "in_out"]), "bias": st.booleans(),
                               "ratio": st.integers(2, 4), "n_layer": st.integers(1, 2)}),
        st.sampled_from([16, 32, 48, 64]),
        lambda c, w: TinyLM(w, c["n_layer"], c["ratio"], c["glu"], c["norm"], c["layout"], c["bias"]),
        lambda c: _tokens(),
    ),
}

PROPS = settings(max_examples=20, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow],
                 phases=[Phase.explicit, Phase.generate])  # no shrinking: each example is a muplify() call


def _draw(data, fam: Family, distinct: bool):
    cfg = data.draw(fam.config, label="config")
    w0 = data.draw(fam.widths, label="base_width")
    w1 = data.draw(fam.widths.filter(lambda w: w != w0), label="width") if distinct else w0
    return cfg, w0, w1


def _build(fam: Family, cfg: dict, width: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return fam.make(cfg, width)


def _mu(fam, cfg, model, base):
    return muplify(model, base_width=base, example_inputs=fam.inputs(cfg))


# ------------------------------------------------------------------------------------------------ properties
@pytest.mark.parametrize("family", list(FAMILIES))
@PROPS
@given(data=st.data())
def test_roles_equal_two_width_oracle(family, data):
    fam = FAMILIES[family]
    cfg, base, width = _draw(data, fam, distinct=True)
    with _oracle_knows_inout():
        expected = oracle.oracle_roles(lambda w: fam.make(cfg, w), base, width)
    mu = _mu(fam, cfg, _build(fam, cfg, width), base)
    got = {n: mu.plan[n].role for n in expected}
    assert got == expected, {n: (got[n], expected[n]) for n in expected if got[n] != expected[n]}
    assert mu.plan.width_mult == pytest.approx(width / base)
    hidden = [n for n, r in expected.items() if r == "hidden"]
    for n in hidden:  # and the multipliers follow from the roles
        assert mu.plan[n].lr_mult["adam"] == pytest.approx(base / width), n


@pytest.mark.parametrize("family", list(FAMILIES))
@PROPS
@given(data=st.data())
def test_base_width_identity(family, data):
    fam = FAMILIES[family]
    cfg, base, _ = _draw(data, fam, distinct=False)
    model = _build(fam, cfg, base)
    ref = copy.deepcopy(model)
    x = fam.inputs(cfg)
    mu = _mu(fam, cfg, model, base)
    assert all(f.factor == 1.0 for f in mu.plan.forward)
    assert not any(isinstance(h, MuScale) for m in mu.modules() for h in (*m._forward_pre_hooks.values(),
                                                                          *m._forward_hooks.values()))
    for a, b in zip(ref.state_dict().values(), mu.state_dict().values()):
        assert torch.equal(a, b)
    out_ref, out_mu = ref(*x), mu(*x)
    assert torch.equal(out_ref, out_mu)
    opt_ref = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    opt_mu = mu.optimizer(torch.optim.AdamW, lr=1e-2)
    out_ref.float().pow(2).mean().backward()
    out_mu.float().pow(2).mean().backward()
    opt_ref.step()
    opt_mu.step()
    for (n, a), b in zip(ref.named_parameters(), mu.parameters()):
        assert torch.equal(a, b), n


@pytest.mark.parametrize("family", list(FAMILIES))
@PROPS
@given(data=st.data())
def test_muplify_is_deterministic(family, data):
    fam = FAMILIES[family]
    cfg, base, width = _draw(data, fam, distinct=True)
    a = _mu(fam, cfg, _build(fam, cfg, width), base)
    b = _mu(fam, cfg, _build(fam, cfg, width), base)
    assert a.plan.to_json() == b.plan.to_json()
    assert str(a.plan) == str(b.plan)
    for (n, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), n
