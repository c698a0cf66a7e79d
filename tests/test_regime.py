"""Batch-size and training-duration transfer (issue 17 §1): the regime rules of each optimizer family against their
formulas, composed with width (μP) and depth (CompleteP), read inside ``step()``; identity at κ = 1; bad input; the
scheduler interplay."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from muplify import MuplifyError, muplify
from muplify.errors import OptimizerRuleError
from muplify.models import GPT, MLP

B0, S0 = 8, 100


def _mlp(width=128, seed=0, **kw):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return muplify(MLP(in_features=16, width=width, out_features=4), base_width=64, width=width, **kw)


def _gpt(n_layer=4, width=64, seed=0, **kw):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return muplify(GPT(vocab_size=64, d_model=width, n_layer=n_layer, head_dim=16, block_size=16,
                           tie_weights=False), base_width=32, width=width, **kw)


def _loss(mu, i=0):
    g = torch.Generator().manual_seed(10 + i)
    if isinstance(mu, GPT):
        x = torch.randint(0, 64, (2, 16), generator=g)
        return F.cross_entropy(mu(x).flatten(0, 1), torch.roll(x, -1, 1).flatten())
    x = torch.randn(8, 16, generator=g)
    return F.cross_entropy(mu(x), torch.randint(0, 4, (8,), generator=g))


def _by_roles(opt):
    return {g["mup_roles"]: g for g in opt.param_groups}


def _quiet(fn, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **k)


# ------------------------------------------------------------------------------------------------ the formulas
ADAM_CASES = [  # (class, options, decoupled)
    (torch.optim.AdamW, dict(betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1), True),
    (torch.optim.Adam, dict(betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1), False),  # L2: part of the loss
    (torch.optim.Adam, dict(betas=(0.9, 0.999), weight_decay=0.1, decoupled_weight_decay=True), True),
    (torch.optim.NAdam, dict(betas=(0.9, 0.98), weight_decay=0.05, decoupled_weight_decay=True), True),
    (torch.optim.RAdam, dict(betas=(0.9, 0.99), weight_decay=0.0), False),
]


@pytest.mark.parametrize("kb,ks", [(4, 1), (1, 8), (4, 4), (0.25, 2)])
@pytest.mark.parametrize("cls,opts,decoupled", ADAM_CASES)
@pytest.mark.parametrize("build", ["width", "depth"])
def test_adam_like_rules_compose_with_width_and_depth(cls, opts, decoupled, kb, ks, build):
    """Adam-like: lr × √κ_B, β → β^κ_B, ε ÷ √κ_B, decoupled wd ÷ (√κ_B·κ_S), times the μP/CompleteP factors."""
    make = (lambda **kw: _mlp(**kw)) if build == "width" else (lambda **kw: _gpt(base_depth=2, **kw))
    base_b = 16 if kb < 1 else B0
    plain = _quiet(make().optimizer, cls, lr=1e-3, **opts)
    mu = make(base_batch_size=base_b, base_steps=S0)
    opt = _quiet(mu.optimizer, cls, lr=1e-3, **opts, batch_size=int(base_b * kb), steps=int(S0 * ks))
    ref = _by_roles(plain)
    assert set(ref) == set(_by_roles(opt))
    wd_on = opts.get("weight_decay", 0.0) > 0 and decoupled
    betas = opts.get("betas", (0.9, 0.999))
    for roles, g in _by_roles(opt).items():
        r = ref[roles]
        assert g["lr_mult"] == pytest.approx(r["lr_mult"] * math.sqrt(kb), rel=1e-12)
        assert g["eps_mult"] == pytest.approx(r["eps_mult"] / math.sqrt(kb), rel=1e-12)
        want_wd = r["wd_mult"] / (math.sqrt(kb) * ks) if wd_on else r["wd_mult"]
        assert g["wd_mult"] == pytest.approx(want_wd, rel=1e-12)
        assert g["betas"] == pytest.approx(tuple(b ** kb for b in betas), rel=1e-12)
        assert "κ_B" in g["mup_regime"] or "κ_S" in g["mup_regime"]
    if build == "depth":  # the CompleteP factor is in there: ε of in-branch weights × 1/m × m_L^-1 × 1/√κ_B
        assert min(g["eps_mult"] for g in opt.param_groups) == pytest.approx(0.5 * 0.5 / math.sqrt(kb))
        assert "depth L = 4, base_depth = 2" in str(mu.plan)


def test_lr_times_wd_times_steps_is_kept_for_adamw():
    """The point of the weight-decay rule: the decay per run lr·wd·steps (AdamW's timescale as a fraction of the
    run) is what it was on the proxy, for every group."""
    plain = _quiet(_mlp().optimizer, torch.optim.AdamW, lr=2e-3, weight_decay=0.1)
    opt = _quiet(_mlp(base_batch_size=B0, base_steps=S0).optimizer, torch.optim.AdamW, lr=2e-3, weight_decay=0.1,
                 batch_size=4 * B0, steps=16 * S0)
    ref = _by_roles(plain)
    for roles, g in _by_roles(opt).items():
        here = g["lr"] * g["lr_mult"] * g["weight_decay"] * g["wd_mult"] * 16 * S0
        there = ref[roles]["lr"] * ref[roles]["lr_mult"] * ref[roles]["weight_decay"] * ref[roles]["wd_mult"] * S0
        assert here == pytest.approx(there, rel=1e-12)


def test_rmsprop_alpha_and_momentum():
    """RMSprop: α (its β₂) → α^κ_B; heavy-ball momentum μ → μ^κ_B with the lr corrected so the effective lr/(1-μ)
    follows √κ_B."""
    kb = 4
    plain = _quiet(_mlp().optimizer, torch.optim.RMSprop, lr=1e-3, alpha=0.99, momentum=0.9)
    opt = _quiet(_mlp(base_batch_size=B0).optimizer, torch.optim.RMSprop, lr=1e-3, alpha=0.99, momentum=0.9,
                 batch_size=kb * B0)
    ref = _by_roles(plain)
    for roles, g in _by_roles(opt).items():
        assert g["alpha"] == pytest.approx(0.99 ** kb) and g["momentum"] == pytest.approx(0.9 ** kb)
        eff = g["lr_mult"] / (1 - g["momentum"])
        assert eff == pytest.approx(ref[roles]["lr_mult"] / (1 - 0.9) * math.sqrt(kb), rel=1e-12)


@pytest.mark.parametrize("momentum,dampening,wd", [(0.0, 0.0, 0.0), (0.9, 0.0, 1e-4), (0.8, 0.5, 0.0)])
@pytest.mark.parametrize("build", ["width", "depth"])
def test_sgd_linear_rule_on_the_effective_lr(momentum, dampening, wd, build):
    """SGD: the effective lr lr·(1-d)/(1-μ) × κ_B, μ → μ^κ_B, wd ÷ (κ_B·κ_S), times the μP/CompleteP factors."""
    kb, ks = 4, 2
    make = (lambda **kw: _mlp(**kw)) if build == "width" else (lambda **kw: _gpt(base_depth=2, **kw))
    kw = dict(lr=0.1, momentum=momentum, dampening=dampening, weight_decay=wd)
    ref = _by_roles(_quiet(make().optimizer, torch.optim.SGD, **kw))
    opt = _quiet(make(base_batch_size=B0, base_steps=S0).optimizer, torch.optim.SGD, **kw, batch_size=kb * B0,
                 steps=ks * S0)
    for roles, g in _by_roles(opt).items():
        r = ref[roles]
        new_mu = momentum ** kb if momentum else 0.0
        assert g["momentum"] == pytest.approx(new_mu, rel=1e-12)
        eff_new = g["lr_mult"] / (1 - new_mu)
        assert eff_new == pytest.approx(r["lr_mult"] / (1 - momentum) * kb, rel=1e-12)
        assert g["wd_mult"] == pytest.approx(r["wd_mult"] / (kb * ks) if wd else r["wd_mult"], rel=1e-12)
        assert "eps_mult" not in g


def test_class_default_betas_are_scaled_too():
    """betas not passed: the optimizer's own default (0.9, 0.999) follows the rule (it is written into the group)."""
    opt = _quiet(_mlp(base_batch_size=B0).optimizer, torch.optim.AdamW, lr=1e-3, batch_size=2 * B0)
    assert all(g["betas"] == pytest.approx((0.81, 0.999 ** 2)) for g in opt.param_groups)


# ------------------------------------------------------------------------------------------------ inside step()
def _seen_in_step(opt):
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append([{key: g.get(key) for key in (
        "lr", "eps", "weight_decay", "betas", "momentum")} for g in o.param_groups]))
    return seen


def test_first_adam_step_size_read_inside_step():
    """The first AdamW step moves every entry by lr·lr_mult (bias-corrected m̂/√v̂ = ±1 with ε ≪ |g|): at κ_B = 4
    twice the κ = 1 step, group for group; the values the step reads are the scaled ones."""
    kb = 4
    steps = {}
    for name, kw in (("base", {}), ("target", dict(batch_size=kb * B0))):
        mu = _mlp(base_batch_size=B0)
        opt = _quiet(mu.optimizer, torch.optim.AdamW, lr=1e-3, eps=1e-12, weight_decay=0.0, **kw)
        seen = _seen_in_step(opt)
        before = {n: p.detach().clone() for n, p in mu.named_parameters()}
        _loss(mu).backward()
        opt.step()
        names = {id(p): n for n, p in mu.named_parameters()}
        steps[name] = {names[id(p)]: ((p.detach() - before[names[id(p)]]).abs().median().item(), gi)
                       for gi, g in enumerate(opt.param_groups) for p in g["params"]}
        steps[name + "_seen"] = (seen[0], [g["lr"] for g in opt.param_groups], opt)
    seen, sched_lr, opt = steps["target_seen"]
    for gi, g in enumerate(opt.param_groups):  # inside step(): lr × lr_mult, ε × eps_mult, the new betas
        assert seen[gi]["lr"] == pytest.approx(sched_lr[gi] * g["lr_mult"])
        assert seen[gi]["eps"] == pytest.approx(1e-12 * g["eps_mult"])
        assert seen[gi]["betas"] == pytest.approx((0.9 ** kb, 0.999 ** kb))
        assert g["lr"] == 1e-3  # after step(): the schedule's value again
    for n, (d, _) in steps["target"].items():
        d0 = steps["base"][n][0]
        if d0 > 0:
            assert d / d0 == pytest.approx(math.sqrt(kb), rel=1e-3), n


def test_first_sgd_step_is_kappa_times_larger():
    """SGD without momentum: the first update is lr·lr_mult·g, κ_B times the proxy's (same gradient)."""
    deltas = []
    for kw in ({}, dict(batch_size=4 * B0)):
        mu = _mlp(base_batch_size=B0)
        opt = _quiet(mu.optimizer, torch.optim.SGD, lr=0.05, **kw)
        w = mu.net[2].weight
        before = w.detach().clone()
        _loss(mu).backward()
        opt.step()
        deltas.append(w.detach() - before)
    scale = deltas[1].abs().max().item()
    assert scale > 0
    torch.testing.assert_close(deltas[1], 4 * deltas[0], rtol=1e-3, atol=1e-3 * scale)  # W + Δ - W rounds


# ------------------------------------------------------------------------------------------------ κ = 1
@pytest.mark.parametrize("cls,kw", [(torch.optim.AdamW, dict(lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)),
                                    (torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=1e-3))])
def test_base_regime_is_bit_identical(cls, kw):
    """batch_size = base_batch_size and steps = base_steps: every parameter after 3 steps equals today's exactly."""
    runs = []
    for extra in ({}, dict(batch_size=B0, steps=S0)):
        mu = _gpt(base_depth=2, base_batch_size=B0, base_steps=S0)
        opt = _quiet(mu.optimizer, cls, **kw, **extra)
        for i in range(3):
            opt.zero_grad()
            _loss(mu, i).backward()
            opt.step()
        runs.append((mu, opt))
    (a, oa), (b, ob) = runs
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n
    for ga, gb in zip(oa.param_groups, ob.param_groups):
        for k in ("lr_mult", "wd_mult", "eps_mult", "betas", "momentum"):
            assert ga.get(k) == gb.get(k)
    assert "mup_regime" not in oa.param_groups[0] and "κ_B 1" in ob.param_groups[0]["mup_regime"]


def test_no_regime_given_changes_nothing():
    """base_batch_size= alone (the proxy's regime recorded) and an optimizer without batch_size=: as today."""
    a = _quiet(_mlp().optimizer, torch.optim.AdamW, lr=1e-3)
    b = _quiet(_mlp(base_batch_size=B0, base_steps=S0).optimizer, torch.optim.AdamW, lr=1e-3)
    for ga, gb in zip(a.param_groups, b.param_groups):
        assert {k: v for k, v in ga.items() if k != "params"} == {k: v for k, v in gb.items() if k != "params"}


# ------------------------------------------------------------------------------------------------ schedulers
def test_scheduler_sees_base_values_and_step_sees_scaled():
    """A LambdaLR writes the schedule into group['lr']; inside step() it is × lr_mult (μP × √κ_B)."""
    mu = _mlp(base_batch_size=B0)
    opt = _quiet(mu.optimizer, torch.optim.AdamW, lr=1e-3, batch_size=4 * B0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** s)
    seen = _seen_in_step(opt)
    for i in range(3):
        opt.zero_grad()
        _loss(mu, i).backward()
        opt.step()
        sched.step()
    for i in range(3):
        for gi, g in enumerate(opt.param_groups):
            assert seen[i][gi]["lr"] == pytest.approx(1e-3 * 0.5 ** i * g["lr_mult"])
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3 * 0.5 ** 3] * len(opt.param_groups))


# ------------------------------------------------------------------------------------------------ printing
def test_plan_and_groups_show_the_regime():
    mu = _mlp(base_batch_size=B0, base_steps=S0)
    text = str(mu.plan)
    assert "regime: base_batch_size = 8, base_steps = 100" in text and "adam: lr x √κ_B" in text
    opt = _quiet(mu.optimizer, torch.optim.AdamW, lr=1e-3, batch_size=4 * B0, steps=2 * S0)
    g = opt.param_groups[0]["mup_regime"]
    assert "κ_B 4" in g and "κ_S 2" in g and "lr x2" in g and "Malladi" in g
    assert any("optimizer AdamW at batch 8 -> 32" in n for n in mu.plan.notes)
    assert "optimizer AdamW at batch 8 -> 32" in str(mu.plan)


def test_tiny_average_warns():
    """κ_B so large that β^κ_B spans less than a step: a warning (β stays valid)."""
    with pytest.warns(UserWarning, match="less than one step"):
        opt = _mlp(base_batch_size=1).optimizer(torch.optim.AdamW, lr=1e-3, betas=(0.9, 0.95), batch_size=64)
    assert 0 <= opt.param_groups[0]["betas"][0] < 1


# ------------------------------------------------------------------------------------------------ bad input
class Lion(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99)):
        super().__init__(params, dict(lr=lr, betas=betas))

    def step(self, closure=None):
        return None


BAD = [
    (dict(batch_size=32), {}, "base_batch_size="),  # no proxy batch size
    (dict(steps=400), dict(base_batch_size=B0), "base_steps="),
    (dict(batch_size=0), dict(base_batch_size=B0), "batch_size must be a positive int, got 0"),
    (dict(batch_size=-8), dict(base_batch_size=B0), "positive int"),
    (dict(steps=2.5), dict(base_steps=S0), "steps must be a positive int"),
    (dict(batch_size=True), dict(base_batch_size=B0), "positive int"),
]


@pytest.mark.parametrize("opt_kw,mu_kw,match", BAD)
def test_bad_regime_input_is_one_line_and_changes_nothing(opt_kw, mu_kw, match):
    mu = _mlp(**mu_kw)
    state = {k: v.clone() for k, v in mu.state_dict().items()}
    notes = list(mu.plan.notes)
    with pytest.raises(OptimizerRuleError, match=match) as e:
        mu.optimizer(torch.optim.AdamW, lr=1e-3, **opt_kw)
    assert "\n" not in str(e.value)
    assert all(torch.equal(state[k], v) for k, v in mu.state_dict().items()) and mu.plan.notes == notes


@pytest.mark.parametrize("cls,kw,family", [
    (Lion, dict(rule="sign"), "'sign'"),
    (torch.optim.Adafactor, {}, "'adafactor'"),
    (torch.optim.Adagrad, {}, "Adagrad (family 'adam')"),
    (torch.optim.Adamax, {}, "Adamax (family 'adam')"),
    (torch.optim.ASGD, {}, "ASGD (family 'sgd')"),
])
def test_family_without_rule_refuses(cls, kw, family):
    mu = _mlp(base_batch_size=B0)
    with pytest.raises(OptimizerRuleError, match=re_escape(family)) as e:
        mu.optimizer(cls, lr=1e-3, batch_size=32, **kw)
    assert "\n" not in str(e.value) and "no batch-size/duration rule" in str(e.value)


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch without Muon")
def test_muon_refuses_even_with_an_adam_fallback():
    mu = _mlp(base_batch_size=B0)
    with pytest.raises(OptimizerRuleError, match="'muon'"):
        mu.optimizer(torch.optim.Muon, lr=1e-2, fallback=(torch.optim.AdamW, {"lr": 1e-3}), batch_size=32)


def test_bad_averaging_coefficient_refuses_before_building():
    mu = _mlp(base_batch_size=B0)
    with pytest.raises(OptimizerRuleError, match=r"betas\[0\]=1.5"):
        mu.optimizer(torch.optim.AdamW, lr=1e-3, betas=(1.5, 0.9), batch_size=32)
    assert mu.plan.notes == [n for n in mu.plan.notes if "optimizer AdamW" not in n]


@pytest.mark.parametrize("kw,match", [(dict(base_batch_size=0), "base_batch_size must be a positive int"),
                                      (dict(base_steps=-1), "base_steps must be a positive int"),
                                      (dict(base_steps=1.5), "base_steps must be")])
def test_bad_base_regime_leaves_the_model_untouched(kw, match):
    torch.manual_seed(0)
    model = MLP(in_features=16, width=128, out_features=4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(MuplifyError, match=match) as e:
        muplify(model, base_width=64, **kw)
    assert "\n" not in str(e.value) and type(model) is MLP
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def re_escape(s):
    import re

    return re.escape(s)


# ------------------------------------------------------------------------------------------------ tune / transfer (§2)
def _proxy(width: int) -> nn.Module:
    return MLP(in_features=16, width=width, out_features=4)


def _fit(model, optimizer, report, steps: int = 4) -> float:
    for i in range(steps):
        optimizer.zero_grad()
        loss = _loss(model, i)
        loss.backward()
        optimizer.step()
    return _loss(model, 99).item()


def test_tune_records_the_proxy_regime_and_transfer_applies_it():
    from muplify.tools.tune import Choice, Fixed, transfer, tune

    space = {"lr": Choice([1e-3, 3e-3]), "optimizer.weight_decay": Fixed(0.1), "optimizer.betas": Fixed((0.9, 0.95))}
    res = tune(_proxy, 32, _fit, torch.optim.AdamW, trials=2, space=space, defaults=False, storage=None,
               progress=False, pruner=None, sampler="grid", batch_size=B0, steps=S0)
    assert res.best["regime"] == {"batch_size": B0, "steps": S0} and res.spec["regime"] == res.best["regime"]
    assert all(t.state == "complete" for t in res.trials)
    mu, opt = _quiet(transfer, _proxy, res.best, torch.optim.AdamW, width=128, batch_size=4 * B0, steps=4 * S0)
    assert mu.plan.options.base_batch_size == B0 and mu.plan.options.base_steps == S0
    _, ref = _quiet(transfer, _proxy, res.best, torch.optim.AdamW, width=128)  # today's transfer: no regime rules
    for g, r in zip(opt.param_groups, ref.param_groups):
        assert g["lr_mult"] == pytest.approx(2 * r["lr_mult"]) and g["wd_mult"] == pytest.approx(r["wd_mult"] / 8)
        assert g["betas"] == pytest.approx((0.9 ** 4, 0.95 ** 4)) and "mup_regime" not in r
    with pytest.raises(Exception, match="batch_size must be an int >= 1"):
        tune(_proxy, 32, _fit, trials=1, space=space, defaults=False, storage=None, progress=False, batch_size=0)
    plain = dict(res.best)
    plain.pop("regime")
    with pytest.raises(Exception, match=r"records none .*pass base_batch_size="):
        transfer(_proxy, plain, torch.optim.AdamW, width=128, batch_size=32)


def test_cli_transfer_prints_the_regime_values(tmp_path, capsys):
    import json

    from muplify.cli import main

    best = {"hp": {}, "lr": 1e-3, "width": 32, "optimizer": {"weight_decay": 0.1, "betas": [0.9, 0.95]},
            "optimizer_class": "torch.optim.adamw.AdamW", "regime": {"batch_size": 8, "steps": 100}}
    path = tmp_path / "best.json"
    path.write_text(json.dumps(best))
    args = ["transfer", "muplify.models:MLP", "--width-arg", "width", "--arg", "in_features=16", "--arg",
            "out_features=4", "--width", "128", "--hp", str(path)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(args + ["--batch-size", "32", "--steps", "400"]) == 0
    out = capsys.readouterr().out
    assert "batch_size=32, steps=400)" in out and "values inside step() per param group:" in out
    assert "betas (0.6561, 0.814506)" in out and "κ_B 4" in out and "regime: base_batch_size = 8" in out
    hidden = next(line for line in out.splitlines() if line.strip().startswith("hidden ("))
    assert "lr 0.0005," in hidden  # 1e-3 × μP 1/4 (width 128 over 32) × √4
    assert "weight_decay 0.05," in hidden  # 0.1 × coupled 4 × 1/(√4·4)
    assert "eps 1.25e-09" in hidden  # 1e-8 × 1/4 × 1/√4
    best.pop("regime")
    path.write_text(json.dumps(best))
    assert main(args + ["--batch-size", "32"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--batch-size needs the proxy's batch size" in err
