"""The op rules and the op table (muplify.rules): what each family of rules records (selected/counted/indexed axes,
expert stacks, reassembled slices, created tensors; moved from test_analysis_issue8); one registered object per op,
its properties read by every later stage; registration errors are loud."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

import muplify.core as core  # noqa: F401
from muplify import muplify
from muplify.rules import OUT, Call, DimGraph, Norm, rule, table, unregister
from analysis_support import X8, analysis, analysis_of, quiet_muplify  # noqa: F401
from muplify_dev.oracle import infinite_axes, oracle_roles  # noqa: F401
from muplify_dev.zoo import build, widths_for  # noqa: F401

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
    def _gain_norm(g: DimGraph, call: Call) -> None:
        g.eq_axes(call.arg("x"), call.node)
        for slot in (1, 2):
            g.broadcast(call.node, call.at(slot))
            g.use(call.node, slot, "elementwise", (), (0,))

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


def test_a_rule_reads_its_arguments_by_schema_name():
    seen = []

    @rule("muplify_test.gain_norm.default", needs=("x", "weight", OUT))
    def _named(g, call):
        seen.append((call.arg("bias") is call.at(2), call.get("eps", "not passed"), len(call.dims("x")), call.out))

    try:
        _plan()
    finally:
        unregister("muplify_test.gain_norm.default")
    assert seen and all(s[:3] == (True, "not passed", 3) and len(s[3]) == 3 for s in seen)


def test_a_misnamed_argument_raises_with_the_node():
    @rule("muplify_test.gain_norm.default", needs=("input",))
    def _misnamed(g, call):
        pass

    try:
        with pytest.raises(KeyError, match=r"has no argument 'input' \(it has: x, weight, bias\)") as info:
            _plan()
        assert "muplify_test.gain_norm" in "".join(info.value.__notes__)
    finally:
        unregister("muplify_test.gain_norm.default")


# ------------------------------------------------------------------------------------------------ 1. fixed dims
def _select(op: str, logits: torch.Tensor) -> torch.Tensor:
    """A per-row weight computed from ``logits`` (B, n) by one selection / counting / indexing op (the counting and
    indexing ones take constant indices, so that only the op itself ties the axis)."""
    n = logits.shape[-1]
    idx = torch.arange(logits.shape[0], device=logits.device) % n
    if op == "topk":
        return logits.topk(2, dim=-1).values
    if op == "sort":
        return logits.sort(-1).values[:, -1:]
    if op == "argsort":
        return logits.argsort(-1)[:, -1:].float()
    if op == "argmax":
        return logits.argmax(-1, keepdim=True).float()
    if op == "max":
        return logits.max(-1, keepdim=True).values
    if op == "select":
        return logits[:, 0] * logits[:, 1]
    if op == "one_hot":
        return F.one_hot(idx, n) * logits
    if op == "histc":
        return logits * torch.histc(idx.float(), bins=n, min=0, max=n - 1)
    if op == "scatter":
        return torch.zeros_like(logits).scatter(1, idx[:, None], 1.0) * logits
    if op == "index_add":
        return torch.zeros_like(logits).index_add(1, torch.tensor([0, 1]), torch.ones_like(logits[:, :2])) * logits
    if op == "gather":
        return logits.gather(1, idx[:, None])
    raise ValueError(op)


class Probe(nn.Module):
    """A Linear(d, 4) whose output axis is only selected / counted / indexed: a router (output-like)."""

    def __init__(self, op: str, d: int = 64, n: int = 4):
        super().__init__()
        self.op = op
        self.inp, self.mid, self.proj, self.out = nn.Linear(8, d), nn.Linear(d, d), nn.Linear(d, n), nn.Linear(d, 3)

    def forward(self, x):
        h = self.mid(torch.relu(self.inp(x)))
        return self.out(h) * _select(self.op, self.proj(h)).sum(-1, keepdim=True)


@pytest.mark.parametrize("op", ["topk", "sort", "argsort", "argmax", "max", "select", "one_hot", "histc", "scatter",
                                "index_add", "gather"])
def test_selected_counted_or_indexed_axis_is_fixed(op):
    mu = quiet_muplify(Probe(op), base_width=32, example_inputs=(X8,))
    p = mu.plan["proj.weight"]
    assert p.role == "output" and p.fan_out == 4 and p.fan_in == mu.plan.width_symbol, (op, p.role, p.fan_out)
    assert mu.plan["mid.weight"].role == "hidden"


class GroupedMM(nn.Module):
    """Expert stacks through torch._grouped_mm (bf16: its CPU kernel's dtype), experts selected by a sort."""

    def __init__(self, d: int = 64, n: int = 4):
        super().__init__()
        self.router = nn.Linear(d, n, dtype=torch.bfloat16)
        self.up = nn.Parameter(torch.randn(n, d, 2 * d, dtype=torch.bfloat16) / d ** 0.5)
        self.down = nn.Parameter(torch.randn(n, 2 * d, d, dtype=torch.bfloat16) / d ** 0.5)
        self.inp, self.out = nn.Linear(8, d, dtype=torch.bfloat16), nn.Linear(d, 3, dtype=torch.bfloat16)

    def forward(self, x):
        h = self.inp(x.to(torch.bfloat16))
        expert = self.router(h).argmax(-1)
        order = expert.argsort()
        offs = torch.cumsum(torch.bincount(expert, minlength=self.up.shape[0]), 0).to(torch.int32)
        y = torch._grouped_mm(torch.relu(torch._grouped_mm(h[order], self.up, offs=offs)), self.down, offs=offs)
        return self.out(h + y[order.argsort()])


def test_grouped_mm_expert_stacks():
    wa = analysis(GroupedMM(), X8)
    w = wa.width_symbol
    assert wa.params["up"].axis_exprs == [4, w, 2 * w] and wa.params["down"].axis_exprs == [4, 2 * w, w]
    assert all(wa.params[n].decided_by == "graph" for n in ("up", "down", "router.weight"))
    assert wa.params["router.weight"].axis_exprs == [4, w]


class PartialRotaryQNorm(nn.Module):
    """Attention with a per-head q/k RMSNorm (head_dim 16, fixed) and rotary on 4 of the 16 channels: the rotated
    and the passed slices are concatenated back, which must be the head_dim again."""

    def __init__(self, d: int = 64):
        super().__init__()
        self.h = d // 16
        self.embed, self.q, self.k, self.v, self.o = (nn.Embedding(100, d), nn.Linear(d, d), nn.Linear(d, d),
                                                      nn.Linear(d, d), nn.Linear(d, d))
        self.q_norm, self.k_norm = nn.RMSNorm(16), nn.RMSNorm(16)
        self.readout = nn.Linear(d, 100)

    def rotate(self, x):
        rot, rest = x[..., :4], x[..., 4:]
        rot = torch.cat([-rot[..., 2:], rot[..., :2]], dim=-1)
        return torch.cat([rot, rest], dim=-1)

    def forward(self, idx):
        x = self.embed(idx)
        B, T, _ = x.shape
        q = self.rotate(self.q_norm(self.q(x).view(B, T, self.h, 16)).transpose(1, 2))
        k = self.rotate(self.k_norm(self.k(x).view(B, T, self.h, 16)).transpose(1, 2))
        v = self.v(x).view(B, T, self.h, 16).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, -1)
        return self.readout(x + self.o(y))


def test_partial_rotary_slices_reassemble_the_head_dim():
    oracle = oracle_roles(PartialRotaryQNorm, 32, 64)
    mu = quiet_muplify(PartialRotaryQNorm(64), base_width=32)
    assert {n: mu.plan[n].role for n in oracle} == oracle
    assert mu.plan["q_norm.weight"].role == "fixed" and mu.plan["k_norm.weight"].role == "fixed"


class TimestepConditioned(nn.Module):
    """DiT/diffusion-style conditioning: sinusoidal features of a scalar timestep, built in the forward from
    ``arange(16)``, enter a Linear(32, w); nothing but that arange fixes the 32."""

    def __init__(self, w: int = 64):
        super().__init__()
        self.inp = nn.Linear(6, w)
        self.t_mlp = nn.Linear(32, w)
        self.hidden = nn.Linear(w, w)
        self.out = nn.Linear(w, 3)

    def forward(self, x, t):
        freqs = torch.exp(-torch.arange(16, dtype=torch.float32) / 16)
        tf = torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], dim=-1)
        return self.out(F.silu(self.hidden(F.silu(self.inp(x) + self.t_mlp(tf)))))


def test_axes_of_tensors_the_forward_creates_are_fixed():
    mu = quiet_muplify(TimestepConditioned(), base_width=32, example_inputs=(torch.randn(2, 6), torch.rand(2)))
    t_mlp = mu.plan["t_mlp.weight"]
    assert (t_mlp.role, t_mlp.fan_in, t_mlp.fan_out) == ("input", 32, mu.plan.width_symbol)
    assert t_mlp.decided_by.startswith("guess") and "built in the forward" in t_mlp.decided_by
    assert [size for size, _e, _n in mu.plan.scaling_dims] == [64]


_SIGNAL_MODELS = {  # name -> (build(width), example inputs, base width)
    "meta_llama": ("MetaLlama", lambda: (torch.randint(0, 64, (2, 8)),), 32),
    "fft_long_conv": ("FFTLongConv", lambda: (torch.randn(2, 16, 4),), 32),
    "fnet": ("FNet", lambda: (torch.randint(0, 40, (2, 8)),), 32),
    "sub_pixel_sr": ("SubPixelSR", lambda: (torch.randn(2, 3, 8, 8),), 32),
    "unfold_patches": ("UnfoldPatches", lambda: (torch.randn(2, 3, 16, 16),), 32),
    "dlrm": ("DLRM", lambda: (torch.randn(4, 13), torch.randint(0, 100, (4, 3, 2))), 32),
}


@pytest.mark.parametrize("name", list(_SIGNAL_MODELS))
def test_complex_fft_pixel_shuffle_unfold_and_embedding_bag_have_rules(name):
    """view_as_complex / view_as_real / real (Meta's rotary), fft / rfft / irfft (long convolutions, FNet),
    pixel_shuffle, im2col (F.unfold) and embedding_bag each have a shape rule: no op is left unconstrained, and one
    width reads every fan as two widths do (sub-pixel conv: 3·r² output channels, not 3w/16; unfold: 3·4·4 patch
    features, not 3w/4; the long-conv filter: (w, L), not (w, w/4); FNet's same-length fft keeps the width)."""
    import muplify_dev.hand_written as hw

    cls_name, inputs, base = _SIGNAL_MODELS[name]
    cls = getattr(hw, cls_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = core.analyze(cls(2 * base), base_width=base, example_inputs=inputs())
        two = core.analyze(cls(2 * base), base=cls(base), example_inputs=inputs())
    assert not [n for n in one.notes if "without a shape rule" in n], one.notes
    assert one.width == 2 * base
    for n, p in two.params.items():
        if one[n].decided_by.startswith("guess"):
            continue  # named where one width cannot tell (DLRM's 8-wide tables)
        assert (one[n].role, str(one[n].fan_in), str(one[n].fan_out)) == (p.role, str(p.fan_in), str(p.fan_out)), n
