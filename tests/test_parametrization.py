"""The parametrization seam: ``muplify(..., parametrization="mup" | "sp" | "spectral" | <Parametrization>)``.

* ``"sp"`` is the identity: the muplified model and its optimizer are the plain model and a plain AdamW (same
  outputs, same updates, every multiplier 1, no hooks);
* ``"spectral"`` (Yang, Simon & Bernstein 2023) has no forward hooks; its init and per-layer learning rates follow
  the spectral condition's numbers (σ ∝ (1/√fan_in)·min(1, √(fan_out/fan_in)), Adam lr ∝ 1/fan_in, SGD lr ∝
  fan_out/fan_in), it trains exactly like μP with the multipliers as hooks, its coordinate check is flat, and it
  refuses what it cannot express without a forward multiplier (a tied readout, a fused query slice);
* a new optimizer family, a new kind of multiplier site and a new parametrization are each one registered object.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from muplify import PlanError, analyze, muplify
from muplify.models import GPT, MLP
from muplify.plan import FoldTarget, Site
from muplify.policy import (FAMILIES, OPTIMIZER_FAMILIES, PARAMETRIZATIONS, SITE_KINDS, MuP, OptimizerFamily,
                            SiteKind, UpdateRule, register_family, register_parametrization, register_site_kind)
from muplify.sites import SITE_FINDERS
from muplify.tools.coord_check import coord_check

BASE = 32
VOCAB, SEQ = 50, 16


def _mlp(width: int, seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP(in_features=20, width=width, out_features=10, depth=3)


def _gpt(width: int, seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    kw.setdefault("tie_weights", False)
    return GPT(vocab_size=VOCAB, d_model=width, n_layer=2, head_dim=16, block_size=SEQ, **kw)


def _tokens(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (4, SEQ), generator=g), torch.randint(0, VOCAB, (4, SEQ), generator=g)


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def _train(model, opt, x, y, steps=3, lm=False):
    for _ in range(steps):
        out = model(x)
        loss = (nn.functional.cross_entropy(out.flatten(0, 1), y.flatten()) if lm else
                nn.functional.cross_entropy(out, y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model(x)


# ------------------------------------------------------------------------------------------------ sp
@pytest.mark.parametrize("make", ["mlp", "gpt"])
def test_sp_is_the_plain_model_and_a_plain_adamw(make):
    width = 4 * BASE
    if make == "mlp":
        g = torch.Generator().manual_seed(0)
        x, y, lm = torch.randn(16, 20, generator=g), torch.randint(0, 10, (16,), generator=g), False
        build = _mlp
    else:
        (x, y), lm, build = _tokens(), True, _gpt
    plain, mu = build(width), build(width)
    mu = muplify(mu, base_width=BASE, parametrization="sp", example_inputs=(x,))
    assert mu.plan.options.parametrization == "sp" and "parametrization=sp" in str(mu.plan)
    assert mu.plan.forward == [] and _no_hooks(mu)
    for (n, p), q in zip(mu.named_parameters(), plain.parameters()):
        assert torch.equal(p, q), n  # init unchanged
    rules = mu.plan.rules()
    assert {v for r in rules.values() for d in (r.lr_mult, r.wd_mult, r.eps_mult) for v in d.values()} == {1.0}
    opt = mu.optimizer(torch.optim.AdamW, lr=1e-2, weight_decay=0.1)
    assert {(g["lr_mult"], g["wd_mult"], g["eps_mult"]) for g in opt.param_groups} == {(1.0, 1.0, 1.0)}
    ref = torch.optim.AdamW(plain.parameters(), lr=1e-2, weight_decay=0.1)
    assert torch.equal(_train(mu, opt, x, y, lm=lm), _train(plain, ref, x, y, lm=lm))
    for p, q in zip(mu.parameters(), plain.parameters()):
        assert torch.equal(p, q)


def test_sp_keeps_hp_constants_as_written_by_hand():
    mu = muplify(_gpt(4 * BASE), base_width=BASE, parametrization="sp", hp={"output_mult": 2.0})
    assert [(f.reason, f.factor) for f in mu.plan.forward] == [("readout", 2.0)]  # no 1/m_in


# ------------------------------------------------------------------------------------------------ spectral
def _spectral_sigma(fan_in: int, fan_out: int) -> float:
    """The spectral condition's init scale (Yang, Simon & Bernstein 2023, eq. for σ_l)."""
    return 1.0 / math.sqrt(fan_in) * min(1.0, math.sqrt(fan_out / fan_in))


@pytest.mark.parametrize("width", [2 * BASE, 4 * BASE])
def test_spectral_mlp_init_and_lr_follow_the_spectral_condition(width):
    """torch's default init draws σ ∝ 1/√fan_in; spectral wants σ_spec(fan_in, fan_out) relative to the base model:
    the factor on the current values is σ_spec(now)/σ_spec(base) ÷ (√base_fan_in/√fan_in).  Adam lr ∝ 1/fan_in and
    SGD lr ∝ fan_out/fan_in relative to base; vectors: Adam 1, SGD ∝ fan_out."""
    mu = muplify(_mlp(width), base_width=BASE, parametrization="spectral")
    assert mu.plan.forward == [] and _no_hooks(mu)
    base = _mlp(BASE)
    for (n, p), (_, b) in zip(mu.named_parameters(), base.named_parameters()):
        e = mu.plan[n]
        if p.dim() == 2:
            fo, fi = p.shape
            bfo, bfi = b.shape
            want = (_spectral_sigma(fi, fo) / _spectral_sigma(bfi, bfo)) / math.sqrt(bfi / fi)
            assert e.init_scale == pytest.approx(want), n
            assert e.lr_mult["adam"] == pytest.approx(bfi / fi), n
            assert e.lr_mult["sgd"] == pytest.approx((fo / fi) / (bfo / bfi)), n
            # the measured std: the spectral σ relative to the base model's values
            ratio = p.detach().std().item() / b.detach().std().item()
            assert ratio == pytest.approx(_spectral_sigma(fi, fo) / _spectral_sigma(bfi, bfo), rel=0.15), n
        else:
            assert e.lr_mult["adam"] == 1.0 and e.lr_mult["sgd"] == pytest.approx(p.shape[0] / b.shape[0]), n
    # the readout's 1/m_in lives in its weights: σ and Adam lr both ∝ 1/fan_in
    assert mu.plan["net.4.weight"].init_scale == pytest.approx(math.sqrt(width / BASE) * BASE / width)


@pytest.mark.parametrize("width", [2 * BASE, 4 * BASE])
def test_spectral_gpt_numbers_no_hooks_and_trains_like_mup(width):
    x, y = _tokens()
    spec = muplify(_gpt(width), base_width=BASE, parametrization="spectral")
    mup = muplify(_gpt(width), base_width=BASE)
    m = width / BASE
    assert spec.plan.forward == [] and _no_hooks(spec) and not _no_hooks(mup)
    # GPT-2's fixed-std init: hidden σ × 1/√m, the readout × 1/m (spectral: √fan_out/fan_in), embeddings unchanged
    assert spec.plan["blocks.0.mlp.0.weight"].init_scale == pytest.approx(1 / math.sqrt(m))
    assert spec.plan["blocks.0.mlp.2.weight"].init_scale == pytest.approx(1 / math.sqrt(m))
    assert spec.plan["lm_head.weight"].init_scale == pytest.approx(1 / m)
    assert spec.plan["wte.weight"].init_scale == 1.0
    # Adam lr ∝ 1/fan_in for every matrix (embeddings: fan_in is the vocabulary, fixed)
    for n, want in (("blocks.0.mlp.0.weight", 1 / m), ("blocks.0.mlp.2.weight", 1 / m), ("lm_head.weight", 1 / m),
                    ("wte.weight", 1.0), ("blocks.0.ln_1.weight", 1.0)):
        assert spec.plan[n].lr_mult["adam"] == pytest.approx(want), n
    # the multipliers moved into the weights: the same function and (Adam) the same training as μP's hooks
    torch.testing.assert_close(spec(x), mup(x), rtol=1e-5, atol=1e-6)
    o_spec = spec.optimizer(torch.optim.AdamW, lr=1e-2, weight_decay=0.1)
    o_mup = mup.optimizer(torch.optim.AdamW, lr=1e-2, weight_decay=0.1)
    torch.testing.assert_close(_train(spec, o_spec, x, y, lm=True), _train(mup, o_mup, x, y, lm=True),
                               rtol=1e-4, atol=1e-4)


def test_spectral_refuses_a_tied_readout():
    with pytest.raises(PlanError, match=r"spectral.*readout weight is tied \(one tensor: wte.weight, lm_head.weight"):
        muplify(_gpt(4 * BASE, tie_weights=True), base_width=BASE, parametrization="spectral")


def test_spectral_refuses_a_multiplier_on_a_fused_slice_and_leaves_the_model():
    model = _gpt(4 * BASE)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    plan = analyze(model, base_width=BASE)
    fused = [a for a in plan.attention if a.query is not None and any(f.axis is not None for f in a.query.fold)]
    if not fused:
        pytest.skip("this GPT computes q with its own Linear")
    with pytest.raises(PlanError, match="spectral.*slice"):
        muplify(model, base_width=BASE, parametrization="spectral", hp={"attn_mult": 2.0})
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_unknown_parametrization_names_the_registered_ones():
    with pytest.raises(Exception, match=r"parametrization must be one of \['mup', 'sp', 'spectral'"):
        muplify(_mlp(64), base_width=BASE, parametrization="ntk")


def test_parametrization_round_trips_through_the_plan_file():
    mu = muplify(_gpt(2 * BASE), base_width=BASE, parametrization="spectral")
    again = muplify(_gpt(2 * BASE), plan=mu.plan.to_json())
    assert again.plan.options.parametrization == "spectral" and again.plan.forward == []


# ------------------------------------------------------------------------------------------------ coordinate check
@pytest.fixture(scope="module")
def mlp_coords():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 20, generator=g), torch.randint(0, 10, (64,), generator=g)
    return coord_check(lambda w: MLP(in_features=20, width=w, out_features=10, depth=3), x, labels=y,
                       parametrizations=("sp", "sp-muplify", "spectral", "mup"))


def test_coord_check_spectral_is_flat_and_sp_grows(mlp_coords):
    res = mlp_coords
    assert res.passed("spectral") and res.passed("mup"), res.table()
    assert not res.passed("sp") and not res.passed("sp-muplify"), res.table()
    # SP through muplify is the plain model: the same curves exactly
    assert res.slopes["sp-muplify"] == res.slopes["sp"]
    # SP's output logits grow with width (Adam: Θ(width) update of the readout's output)
    assert max(res.slopes["sp"][max(res.slopes["sp"], key=lambda k: max(res.slopes["sp"][k]))]) > 0.3


def test_coord_check_spectral_gpt_flat():
    res = coord_check(lambda w: GPT(d_model=w, n_layer=2, tie_weights=False), widths=[64, 128, 256],
                      parametrizations=("spectral",))
    assert res.passed("spectral"), res.table()


# ------------------------------------------------------------------------------------------------ extension points
class ScaledSGD(torch.optim.SGD):
    """Stands in for a user's optimizer with gradient-proportional updates."""


def _hidden_out_finder(ctx) -> list[Site]:
    """A new kind of multiplier site: the output of the MLP's first hidden layer."""
    if "net.2" not in ctx.leaf_modules:
        return []
    return [Site("hidden_out", "net.2", "output", "net.2.weight", None,
                 (FoldTarget("net.2.weight"), FoldTarget("net.2.bias")))]


class HiddenOutKind(SiteKind):
    name, finder, reason_text = "hidden_out", staticmethod(_hidden_out_finder), "hidden_out"

    def factor(self, plan, use, widths):
        return 1.0 / math.sqrt(plan.width_mult) if widths else None


class MuPFixedEps(MuP):
    name, description = "mup_fixed_eps", "test: μP with ε kept fixed"

    def eps_factor(self, p, plan):
        return 1.0


def test_a_new_family_site_kind_and_parametrization_are_each_one_registered_object():
    fam = register_family(OptimizerFamily(name="scaled_sgd", update=UpdateRule.GRADIENT, lr_range=(1e-3, 1.0),
                                          description="test family"), ScaledSGD)
    kind = register_site_kind(HiddenOutKind())
    param = register_parametrization(MuPFixedEps())
    try:
        with pytest.raises(Exception, match="already registered"):
            register_family(OptimizerFamily(name="scaled_sgd"))
        with pytest.raises(Exception, match="already registered"):
            register_site_kind(HiddenOutKind())
        with pytest.raises(Exception, match="already registered"):
            register_parametrization(MuPFixedEps())
        mu = muplify(_mlp(4 * BASE), base_width=BASE, parametrization="mup_fixed_eps")
        # the family: its update rule's μP lr (SGD: hidden m_out/m_in, input m_out), used by the optimizer
        opt = mu.optimizer(ScaledSGD, lr=0.1)
        assert {g["mup_family"] for g in opt.param_groups} == {"scaled_sgd"}
        assert mu.plan["net.0.weight"].lr_mult["scaled_sgd"] == pytest.approx(4.0)
        assert mu.plan["net.2.weight"].lr_mult["scaled_sgd"] == pytest.approx(1.0)
        # the site kind: found, given its factor, hooked
        hooks = [f for f in mu.plan.forward if f.reason == "hidden_out"]
        assert [(f.module, f.factor) for f in hooks] == [("net.2", 0.5)]
        assert mu.net[2]._forward_hooks
        # the parametrization: ε fixed (μP's would be 1/4)
        assert mu.plan["net.2.weight"].eps_mult["adam"] == 1.0
        assert "parametrization=mup_fixed_eps" in str(mu.plan)
        # ... and under spectral the new kind's multiplier moves into the weights it folds into
        spec = muplify(_mlp(4 * BASE), base_width=BASE, parametrization="spectral")
        rules = spec.plan.rules()
        assert spec.plan.forward == [] and rules["net.2.bias"].absorbed == rules["net.2.weight"].absorbed == 0.5
        assert spec.plan["net.2.weight"].init_scale == pytest.approx(0.5)  # hidden, fan-in init: μP factor 1
    finally:
        OPTIMIZER_FAMILIES.pop(ScaledSGD)
        FAMILIES.pop(fam.name)
        SITE_KINDS.pop(kind.name)
        SITE_FINDERS.pop(kind.name)
        PARAMETRIZATIONS.pop(param.name)


def test_site_finders_and_module_kind_rules_refuse_a_taken_name():
    """The registries behind @site_finder and @kind_rule are loud: a second function under a taken name raises and
    the built-in stays."""
    from muplify.module_kinds import KIND_RULES, kind_rule
    from muplify.sites import SITE_FINDERS, site_finder

    before = (dict(SITE_FINDERS), dict(KIND_RULES))
    with pytest.raises(ValueError, match="site finder for 'readout' is already registered"):
        site_finder("readout")(lambda ctx: [])
    with pytest.raises(ValueError, match="module-kind rule for 'norm' is already registered"):
        kind_rule("norm")(lambda plan, p, evidence: None)
    assert (SITE_FINDERS, KIND_RULES) == before
