"""Classification (muplify.classify): roles, readouts and marked guesses from the recorded uses (moved from
test_analysis_issue8)."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import sympy
import torch
import torch.nn as nn
import torch.nn.functional as F

import muplify.core as core
from muplify import CaptureError, muplify
from muplify.capture import capture, default_example_inputs
from muplify.width import analyse
from muplify_dev.oracle import infinite_axes, oracle_roles
from muplify_dev.zoo import build, widths_for

from analysis_support import X8, analysis, analysis_of, quiet_muplify  # noqa: F401


# ------------------------------------------------------------------------------------------------ 4. uses
def test_functional_readout_keeps_its_readout_treatment():
    model, wa = analysis_of("functional_readout", 64)
    args = build("functional_readout", 64)[1]
    assert all(p.decided_by == "graph" for p in wa.params.values())
    plan = quiet_muplify(model, base_width=32, example_inputs=args).plan
    assert plan["unembed"].role == "output" and plan["w_in"].role == "hidden" and plan["emb"].role == "input"
    # no module boundary carries the readout's input (the model is one module): TP-V's Table-3 form, the readout
    # multiplier 1/m_in absorbed into the weight's init and learning rate
    assert not [f for f in plan.forward if f.param == "unembed"]
    assert plan.rules()["unembed"].absorbed == 0.5 and plan["unembed"].lr_mult["adam"] == 0.5
    mu = quiet_muplify(build("functional_readout", 64)[0], base_width=32, example_inputs=args)
    assert torch.isfinite(mu(*args)).all()


@pytest.mark.parametrize("name,param,role", [
    ("weight_norm", "conv2.parametrizations.weight.original1", "hidden"),
    ("weight_norm", "conv2.parametrizations.weight.original0", "vector"),
    ("weight_norm", "head.weight_v", "output"),
    ("lstm_lm", "rnn.weight_hh_l1", "hidden"),
    ("gru_lm", "rnn.weight_ih_l1_reverse", "hidden"),
    ("relpos_mask_token", "rel_table", "fixed"),
    ("relpos_mask_token", "rel_proj.weight", "input"),
    ("relpos_mask_token", "mask_token", "vector"),
    ("loop_moe", "w1", "hidden"),
    ("bmm_moe", "w_up", "hidden"),
    ("hf_gpt_oss", "model.layers.0.mlp.experts.gate_up_proj_bias", "input"),
    ("hf_deberta_v2", "deberta.encoder.rel_embeddings.weight", "input"),
])
def test_uses_that_used_to_be_shape_guesses(name, param, role):
    base, wide = widths_for(name)
    model, args, kwargs = build(name, wide)
    wa = analysis(model, *args, **kwargs)
    assert wa.params[param].decided_by == "graph", wa.params[param].decided_by
    plan = quiet_muplify(model, base_width=base, example_inputs=args, example_kwargs=kwargs).plan
    assert plan[param].role == role


def test_unused_mask_token_is_a_marked_guess():
    model, args, _ = build("relpos_mask_token", 64)
    wa = analysis(model, *args)  # no mask: the torch.where branch is not captured
    assert wa.params["mask_token"].decided_by.startswith("guess: not used")
    with pytest.warns(UserWarning, match=r"guessed the role of 1 parameter\(s\): mask_token"):
        muplify(model, base_width=32, example_inputs=args)


class UnknownOp(nn.Module):
    def __init__(self, d: int = 64):
        super().__init__()
        self.a, self.centers, self.out = nn.Linear(8, d), nn.Parameter(torch.randn(d, d)), nn.Linear(d, 3)

    def forward(self, x):
        return self.out(torch.cdist(self.a(x), self.centers))


def test_parameter_used_only_by_an_op_without_rule_is_a_marked_guess():
    wa = analysis(UnknownOp(), X8)
    assert wa.params["centers"].decided_by.startswith("guess: used only by ops without a shape rule (aten.cdist")
    with pytest.warns(UserWarning, match="centers"):
        muplify(UnknownOp(), base_width=32, example_inputs=(X8,))


# ------------------------------------------------------------------------------------------------ spy on core
def test_headline_call_uses_the_analysis_fields(monkeypatch):
    """plan.width is the analysis' width (core reads WidthAnalysis.width_size)."""
    seen = []
    real = core.analyse
    monkeypatch.setattr(core, "analyse", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    model, _, _ = build("hf_qwen2_moe", 64)
    plan = quiet_muplify(model, base_width=32).plan
    assert plan.width == seen[0].width_size == 64 and seen[0].width_source == "config.hidden_size"
    assert isinstance(seen[0].scaling_dims[0].expr, sympy.Expr)


def test_expert_stacks_gathered_per_token_are_hidden(monkeypatch):
    """transformers' batched_mm experts: gate_up_proj[expert_ids] (a matrix per token) then torch.bmm."""
    import transformers

    def make(w):
        return transformers.MixtralForCausalLM(transformers.MixtralConfig(
            vocab_size=128, hidden_size=w, intermediate_size=2 * w, num_hidden_layers=1, num_attention_heads=w // 16,
            num_key_value_heads=w // 32, head_dim=16, num_local_experts=4, num_experts_per_tok=2,
            max_position_embeddings=32, experts_implementation="batched_mm"))

    oracle = oracle_roles(make, 32, 64)
    seen = []
    real = core.analyse
    monkeypatch.setattr(core, "analyse", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    mu = quiet_muplify(make(64), base_width=32)
    assert {n: mu.plan[n].role for n in oracle} == oracle
    stack = seen[0].params["model.layers.0.mlp.experts.gate_up_proj"]
    assert stack.axis_exprs[0] == 4 and stack.decided_by == "graph"
    assert mu.plan["model.layers.0.mlp.experts.gate_up_proj"].role == "hidden"


# ------------------------------------------------------------------- found on models outside the zoo (general fixes)
class NoGradRouterMoE(nn.Module):
    """A router whose logits enter a ``torch.no_grad()`` block (PhiMoE's sparsemixer computes its mask there):
    torch.export turns the block into a subgraph whose placeholder carries the outer value's name."""

    def __init__(self, d: int = 64, n_experts: int = 3):
        super().__init__()
        self.inp = nn.Linear(8, d)
        self.router = nn.Linear(d, n_experts, bias=False)
        self.up = nn.Linear(d, 2 * d)
        self.down = nn.Linear(2 * d, d)

    def forward(self, x):
        x = self.inp(x)
        logits = self.router(x)
        with torch.no_grad():
            top, _ = logits.max(dim=-1, keepdim=True)
            drop = (top - logits) > 0.5
        gates = logits.masked_fill(drop, float("-inf")).softmax(-1)
        choice = gates.max(dim=-1).values
        return self.down(F.gelu(self.up(x))) * choice[..., None]


def test_router_logits_entering_a_no_grad_block_stay_linked_to_the_router():
    mu = quiet_muplify(NoGradRouterMoE(), base_width=32, example_inputs=(torch.randn(2, 5, 8),))
    assert mu.plan["router.weight"].role == "output"
    assert mu.plan["router.weight"].fan_out == 3


def test_phimoe_router_is_output_like():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.PhimoeConfig(vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                                    num_attention_heads=4, num_key_value_heads=4, num_local_experts=3,
                                    num_experts_per_tok=2, max_position_embeddings=32, bos_token_id=1,
                                    eos_token_id=2, pad_token_id=0)
    mu = quiet_muplify(transformers.PhimoeForCausalLM(cfg), base_width=32)
    assert mu.plan["model.layers.0.mlp.router.weight"].role == "output"
    assert mu.plan["model.layers.0.mlp.experts.gate_up_proj"].role == "hidden"


def test_decisions_are_typed():
    """How a role was decided is a Decision (with the why apart); decided_by stays its text in the plan."""
    from muplify.plan import Decision

    pd = analysis(UnknownOp(), X8).params["centers"]
    assert pd.decision is Decision.GUESS and pd.why.startswith("used only by ops without a shape rule (aten.cdist")
    assert pd.decided_by == "guess: " + pd.why
    plan = quiet_muplify(UnknownOp(), base_width=32, example_inputs=(X8,)).plan
    assert plan["centers"].decision is Decision.GUESS and plan["centers"].guessed
    assert plan["a.weight"].decision is Decision.GRAPH and plan["a.weight"].decided_by == "graph"
