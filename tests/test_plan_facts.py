"""The plan carries what the rewrite and the export need (layouts, fold targets) and stays consistent: edits
re-derive every consequence or are refused once applied; wrapped models and dict plans are handled."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from muplify import MuplifyError, PlanError, is_muplified, muplify
from muplify.models import GPT

VOCAB, SEQ = 64, 8


class ScaleNorm(nn.Module):
    """An RMSNorm whose gain is called ``scale`` (not ``weight``)."""

    def __init__(self, d):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.scale


class TiedFunctional(nn.Module):
    """Readout written as ``F.linear(norm(x), emb.weight)``: tied, functional, after a custom-named gain."""

    def __init__(self, d):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, d)
        self.body = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.norm = ScaleNorm(d)

    def forward(self, idx):
        return F.linear(self.norm(self.body(self.emb(idx))), self.emb.weight)


class QKV(nn.Module):
    """A custom fused qkv projection stored (in, out) — like GPT-2's Conv1D but under another class name."""

    def __init__(self, d):
        super().__init__()
        self.w = nn.Parameter(torch.randn(d, 3 * d) * 0.02)

    def forward(self, x):
        return x @ self.w


class FusedInOutModule(nn.Module):
    def __init__(self, d, n_head=2):
        super().__init__()
        self.n_head = n_head
        self.emb = nn.Embedding(VOCAB, d)
        self.qkv = QKV(d)
        self.proj = nn.Linear(d, d)
        self.head = nn.Linear(d, VOCAB)

    def forward(self, idx):
        x = self.emb(idx)
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.head(self.proj(y.transpose(1, 2).reshape(B, T, C)))


def _ids():
    return torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0))


def test_tied_functional_readout_after_a_custom_gain_exports_without_untying():
    torch.manual_seed(0)
    mu = muplify(TiedFunctional(64), base_width=32, example_inputs=(_ids(),))
    f = next(f for f in mu.plan.forward if f.reason == "readout")
    assert f.module == "norm" and f.where == "output" and [t.param for t in f.fold] == ["norm.scale"]
    std = mu.to_standard()
    torch.testing.assert_close(std(_ids()), mu(_ids()), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(std.norm.scale, mu.norm.scale * 0.5)
    assert std.emb.weight is not None and not std.mup_export_notes  # nothing untied


def test_fused_in_out_projection_folds_attention_into_the_right_axis():
    torch.manual_seed(0)
    mu = muplify(FusedInOutModule(128), base_width=32, example_inputs=(_ids(),), head_scaling="head_dim")
    p = mu.plan["qkv.w"]
    assert p.layout.fan_in_axes == (0,) and p.layout.fan_out_axes == (1,)  # read from the use, not the class
    f = next(f for f in mu.plan.forward if f.reason == "attention")
    assert f.channels == (0, 128, 384) and f.factor == pytest.approx(math.sqrt(16 / 64))
    assert [(t.param, t.axis, t.start, t.stop) for t in f.fold] == [("qkv.w", 1, 0, 128)]
    std = mu.to_standard()
    torch.testing.assert_close(std(_ids()), mu(_ids()), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(std.qkv.w[:, :128], mu.qkv.w[:, :128] * f.factor)
    assert torch.equal(std.qkv.w[:, 128:], mu.qkv.w[:, 128:])


def test_overrides_re_derive_every_consequence():
    torch.manual_seed(0)
    ref = GPT(vocab_size=VOCAB, d_model=64, n_layer=1, head_dim=16, block_size=SEQ, tie_weights=False)
    mu = muplify(copy.deepcopy(ref), base_width=32, example_inputs=(_ids(),),
                 overrides={"lm_head.weight": {"role": "hidden"}, "blocks.0.mlp.0.weight": {"role": "input"}})
    assert not [f for f in mu.plan.forward if f.reason == "readout"]  # no readout left: no multiplier
    assert mu.plan["lm_head.weight"].lr_mult["adam"] == 0.5 and mu.plan["lm_head.weight"].decided_by == "override"
    # init follows the new roles: the former hidden weight keeps its GPT-2 std, the "hidden" readout shrinks
    assert torch.equal(mu.blocks[0].mlp[0].weight, ref.blocks[0].mlp[0].weight)
    torch.testing.assert_close(mu.lm_head.weight, ref.lm_head.weight / math.sqrt(2))


def test_an_applied_plan_is_read_only():
    mu = muplify(GPT(vocab_size=VOCAB, d_model=64, n_layer=1, block_size=SEQ), base_width=32)
    for edit in (lambda: mu.plan.override("lm_head.weight", role="hidden"),
                 lambda: setattr(mu.plan["blocks.0.mlp.0.weight"], "role", "input"),
                 lambda: setattr(mu.plan, "hp", None)):
        with pytest.raises(PlanError, match="read-only"):
            edit()
    copy_plan = mu.plan.copy()  # a copy is editable and does not touch the applied one
    copy_plan.override("lm_head.weight", role="hidden")
    assert mu.plan["wte.weight"].role == "output"


def test_compiled_and_distributed_wrappers():
    model = GPT(vocab_size=VOCAB, d_model=64, n_layer=1, block_size=SEQ)
    compiled = torch.compile(model, backend="eager")
    out = muplify(compiled, base_width=32)
    assert out is compiled and is_muplified(compiled) and is_muplified(model)
    opt = compiled.optimizer(torch.optim.AdamW, lr=1e-3)  # attribute access reaches the muplified module
    compiled(_ids()).sum().backward()
    opt.step()
    assert {round(g["lr_mult"], 6) for g in opt.param_groups} == {1.0, 0.5}

    class FakeDDP(nn.parallel.DistributedDataParallel):  # isinstance check without a process group
        def __init__(self, m):
            nn.Module.__init__(self)
            self.module = m
    wrapped = FakeDDP(GPT(vocab_size=VOCAB, d_model=64, n_layer=1, block_size=SEQ))
    with pytest.raises(MuplifyError, match="muplify the module before wrapping it"):
        muplify(wrapped, base_width=32)


def test_plan_argument_types(tmp_path):
    mu = muplify(GPT(vocab_size=VOCAB, d_model=64, n_layer=1, block_size=SEQ), base_width=32)
    again = muplify(GPT(vocab_size=VOCAB, d_model=64, n_layer=1, block_size=SEQ), plan=mu.plan.to_dict())
    assert again.plan.to_json() == mu.plan.to_json()
    model = GPT(vocab_size=VOCAB, d_model=64, n_layer=1, block_size=SEQ)
    with pytest.raises(PlanError, match="plan= takes a Plan, its dict"):
        muplify(model, plan=42)
    assert not is_muplified(model)


# ------------------------------------------------------------------------------------------------ base= route
@pytest.mark.parametrize("name", ["gpt_sdpa", "hf_llama", "hf_bert", "timm_vit", "timm_resnet", "cnn"])
def test_base_model_route_agrees_with_the_oracle(name):
    from muplify_dev.oracle import oracle_roles
    from muplify_dev.zoo import ZOO, build, widths_for

    base, wide = widths_for(name)
    model, args, kwargs = build(name, wide)
    with torch.device("meta"):
        base_model = build(name, base)[0]
    mu = muplify(model, base=base_model, example_inputs=args, example_kwargs=kwargs)
    assert mu.plan.base_width == base and mu.plan.width_source.startswith("exact")
    assert {n: p.role for n, p in mu.plan.items()} == oracle_roles(name, base, wide)
    assert not [n for n, p in mu.plan.items() if p.guessed]
    # base fans are read, not computed: e.g. Llama's intermediate 8·round(2.75w/8) is not proportional to w
    for n, p in mu.plan.items():
        b = dict(base_model.named_parameters())[n]
        assert p.base_shape == tuple(b.shape), n
    if name == "hf_llama":
        down = mu.plan["model.layers.0.mlp.down_proj.weight"]
        assert (down.base_fan_in, down._size(down.fan_in)) == (ZOO[name].build(base)[0].config.intermediate_size, 176)


def test_base_model_factory_and_errors():
    from muplify.models import MLP

    mu = muplify(MLP(width=128), base=lambda: MLP(width=32))
    assert mu.plan.base_width == 32 and mu.plan["net.2.weight"].lr_mult["adam"] == 0.25
    with pytest.raises(MuplifyError, match="same architecture"):
        muplify(MLP(width=128), base=MLP(width=32, depth=4))
    with pytest.raises(MuplifyError, match="nothing scales"):
        muplify(MLP(width=128), base=MLP(width=128))
    with pytest.raises(MuplifyError, match="disagrees with the base model"):
        muplify(MLP(width=128), base=MLP(width=32), base_width=64)
