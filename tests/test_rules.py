"""The op table (muplify.rules): one registered object per op, its properties read by every later stage;
registration errors are loud."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from muplify import muplify
from muplify.rules import DimGraph, Norm, rule, table, unregister

aten = torch.ops.aten
VOCAB, SEQ = 64, 8


@torch.library.custom_op("muplify_test::gain_norm", mutates_args=())
def gain_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], weight, bias)


@gain_norm.register_fake
def _(x, weight, bias):
    return torch.empty_like(x)


class GainNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d))

    def forward(self, x):
        return gain_norm(x, self.weight, self.bias)


class TiedLM(nn.Module):
    """A tied readout behind a custom norm op: the readout multiplier folds into that norm's gain and bias."""

    def __init__(self, d):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.norm = GainNorm(d)
        self.head = nn.Linear(d, VOCAB, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, idx):
        return self.head(self.norm(self.mlp(self.emb(idx))))


def _plan(d=64):
    idx = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return muplify(TiedLM(d), base_width=32, example_inputs=(idx,)).plan


@pytest.fixture
def gain_norm_rule():
    """A new norm op is one decorated function: its rule and its gain/bias slots."""
    @rule(torch.ops.muplify_test.gain_norm, norm=Norm(weight=1, bias=2))
    def _gain_norm(g: DimGraph, node: fx.Node) -> None:
        g.eq_axes(node.args[0], node)
        for slot in (1, 2):
            g.broadcast(node, node.args[slot])
            g.use(node, slot, "elementwise", (), (0,))

    yield _gain_norm
    unregister(torch.ops.muplify_test.gain_norm)


def test_a_norm_op_registered_once_is_read_by_classify_and_sites(gain_norm_rule):
    assert table.is_norm(torch.ops.muplify_test.gain_norm.default)  # the packet expanded to its overload
    assert table.user_ops() == [torch.ops.muplify_test.gain_norm.default]  # kept apart from the built-ins
    plan = _plan()
    gain, bias = plan["norm.weight"], plan["norm.bias"]
    assert (gain.role, gain.decided_by, gain.gain) == ("vector", "graph", True)  # classify: a norm's gain slot
    assert (bias.role, bias.gain) == ("vector", False)
    readout = next(s for s in plan.sites if s.kind == "readout")
    # sites: the tied readout's multiplier folds into the norm's gain and bias (no untying)
    assert sorted(t.param for t in readout.fold) == ["norm.bias", "norm.weight"]


def test_without_the_rule_the_same_model_is_a_marked_guess():
    plan = _plan()
    assert plan["norm.weight"].decided_by.startswith("guess")
    assert not plan["norm.weight"].gain
    readout = next(s for s in plan.sites if s.kind == "readout")
    assert [t.param for t in readout.fold] != ["norm.bias", "norm.weight"]


def test_registering_an_op_twice_raises():
    with pytest.raises(ValueError, match="already has a rule"):
        rule(aten.native_layer_norm.default)(lambda g, node: None)
    with pytest.raises(ValueError, match="already has a rule"):  # a packet covers the overloads registered before
        rule(aten.gather)(lambda g, node: None)


def test_a_misspelt_overload_raises():
    with pytest.raises(ValueError, match="aten.bernoulli has no overload 'float'"):
        rule("bernoulli.float")(lambda g, node: None)
    with pytest.raises(TypeError, match="unknown op properties"):
        rule("cdist", norms=Norm(1))


def test_one_table_answers_every_stage():
    # the four view-like sets of before are one property; casts are views that keep every axis
    for op in (aten.view.default, aten.permute.default, aten.expand.default, aten.clone.default, aten.dropout.default):
        assert table.is_view_like(op)
    assert table.keeps_axes(aten._to_copy.default) and not table.keeps_axes(aten.permute.default)
    assert table.norm_slots(aten.rms_norm.default) == Norm(weight=2, bias=None)
    assert table.layer_slots(aten.addmm.default).weight == 2 and table.product_operands(aten.mm.default) == (0, 1)
    assert table.is_softmax(aten._softmax.default) and table.is_selection(aten.unbind.int)
    assert table.is_arg_reduction(aten.argmin.default) and table.is_add(aten.add_.Tensor)
    # the gather rule is the one that also records an embedding-style use (it was registered twice before)
    assert table.rule_for(aten.gather.default) is table.rule_for(aten.take_along_dim.default)


def test_an_error_inside_a_rule_names_the_node():
    @rule("muplify_test.gain_norm.default")
    def _broken(g, node):
        raise KeyError("boom")

    try:
        with pytest.raises(KeyError) as info:
            _plan()
        assert "while applying the dimension rule" in "".join(getattr(info.value, "__notes__", []))
        assert "muplify_test.gain_norm" in "".join(info.value.__notes__)
    finally:
        unregister("muplify_test.gain_norm.default")
