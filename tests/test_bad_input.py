"""Bad input: one test per row of the bad-input table in the README.

Every error row checks the error type, the message text, and that the model is untouched afterwards (same class,
same Parameter objects and values, same hooks, same flags).  The last rows are inputs muplify accepts on purpose
(width < base_width, non-float parameters, weights shared across modules); they check the documented behaviour.
"""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn

from muplify import (CaptureError, MuplifyError, OptimizerRuleError, Plan, PlanError, WidthError, is_muplified,
                     muplify)
from muplify.models import MLP
from muplify.optim import OPTIMIZER_FAMILIES, register_rule
from muplify.rewrite import MuScale
from muplify_dev.optimizers import Lion
from muplify_dev.zoo import build

X16 = torch.randn(2, 16, generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------------------------------ untouched check
def _hooks(m: nn.Module):
    return [[(k, id(h)) for k, h in d.items()] for d in
            (m._forward_pre_hooks, m._forward_hooks, m._backward_hooks, m._backward_pre_hooks,
             m._state_dict_hooks, m._load_state_dict_pre_hooks)]


def snapshot(model: nn.Module) -> dict:
    g = nn.modules.module
    return {
        "class": type(model),
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "params": [(n, id(p), p.requires_grad, p.dtype) for n, p in model.named_parameters(remove_duplicate=False)],
        "modules": [(n, id(m), type(m), m.training, sorted(m.__dict__), _hooks(m)) for n, m in
                    model.named_modules(remove_duplicate=False)],
        "global_hooks": (len(g._global_forward_pre_hooks), len(g._global_forward_hooks)),
        "plan": model.__dict__.get("_mup_plan"),
    }


def assert_untouched(model: nn.Module, snap: dict) -> None:
    now = snapshot(model)
    assert now["class"] is snap["class"]
    assert now["params"] == snap["params"]
    assert now["modules"] == snap["modules"]
    assert now["global_hooks"] == snap["global_hooks"]
    assert now["plan"] is snap["plan"]
    assert list(now["state"]) == list(snap["state"])
    for k, v in now["state"].items():
        assert torch.equal(v, snap["state"][k]), k
    if snap["plan"] is None:
        assert not is_muplified(model)
        assert not any(isinstance(h, MuScale) for m in model.modules()
                       for h in (*m._forward_pre_hooks.values(), *m._forward_hooks.values()))


def raises_untouched(model, exc, match, fn=None, **kwargs):
    """Call ``fn(model)`` (default: muplify(model, **kwargs)); assert it raises ``exc`` matching ``match`` and leaves
    ``model`` as it was.  Returns the message."""
    snap = snapshot(model)
    with pytest.raises(exc, match=match) as ei:
        fn(model) if fn is not None else muplify(model, **kwargs)
    assert_untouched(model, snap)
    return str(ei.value)


# ------------------------------------------------------------------------------------------------ models
class Empty(nn.Module):
    def forward(self, x):
        return x * 2


class Boom(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(64, 64)

    def forward(self, x):
        raise RuntimeError("boom: this layer is broken")


class WithBrokenLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.bad, self.out = nn.Linear(16, 64), Boom(), nn.Linear(64, 4)

    def forward(self, x):
        return self.out(self.bad(self.inp(x)))


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(16, 64), nn.Linear(64, 64), nn.Linear(64, 4)

    def forward(self, x):
        h = self.a(x)
        if h.sum() > 0:  # Python branch on a tensor value
            h = self.b(h)
        return self.c(h)


class WithIndex(nn.Module):
    """A net with an integer Parameter (a fixed channel selection), as some checkpoints carry."""

    def __init__(self, width=64):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(16, width), nn.Linear(width, width), nn.Linear(width, 6)
        self.keep = nn.Parameter(torch.tensor([0, 2, 3, 5]), requires_grad=False)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))[:, self.keep]


class SharedHidden(nn.Module):
    """Two unrelated hidden Linear layers holding one weight (tied), plus their own biases."""

    def __init__(self, width=64):
        super().__init__()
        self.a, self.b, self.c, self.d = (nn.Linear(16, width), nn.Linear(width, width), nn.Linear(width, width),
                                          nn.Linear(width, 4))
        self.c.weight = self.b.weight

    def forward(self, x):
        return self.d(torch.relu(self.c(torch.relu(self.b(torch.relu(self.a(x)))))))


def _mlp(width=64):
    torch.manual_seed(0)
    return MLP(in_features=16, width=width, out_features=4, depth=3)


# ------------------------------------------------------------------------------------------------ error rows
@pytest.mark.parametrize("bw", [0, -8, 32.0, True, "32"])
def test_base_width_not_a_positive_int(bw):
    msg = raises_untouched(_mlp(), MuplifyError, "base_width must be a positive int", base_width=bw)
    assert repr(bw) in msg


def test_base_width_missing():
    raises_untouched(_mlp(), MuplifyError, r"needs base_width= \(or base=<the model at the base width>, or plan=\)")


def test_not_a_module():
    with pytest.raises(MuplifyError, match="takes an nn.Module, got function"):
        muplify(lambda x: x, base_width=32)


@pytest.mark.parametrize("kw, match", [({"head_scaling": "dims"}, "head_scaling must be"),
                                       ({"init": "xavier"}, "init must be"),
                                       ({"weight_decay": "decoupled"}, "weight_decay must be")])
def test_bad_option_values(kw, match):
    raises_untouched(_mlp(), MuplifyError, match, base_width=32, **kw)


def test_model_without_parameters():
    raises_untouched(Empty(), MuplifyError, "Empty has no parameters: there is nothing to parametrize",
                     base_width=32, example_inputs=(X16,))


def test_forward_raises_names_the_module():
    msg = raises_untouched(WithBrokenLayer(), CaptureError, "inside module 'bad'", base_width=32,
                           example_inputs=(X16,))
    assert "RuntimeError: boom: this layer is broken" in msg and "example_inputs" in msg


def test_example_inputs_mismatch():
    msg = raises_untouched(_mlp(), CaptureError, "inside module 'net.0'", base_width=32,
                           example_inputs=(torch.randn(2, 7),))
    assert "pass example_inputs/example_kwargs that match an ordinary call" in msg


def test_example_kwargs_mismatch():
    raises_untouched(_mlp(), CaptureError, "unexpected keyword argument 'dropout'", base_width=32,
                     example_inputs=(X16,), example_kwargs={"dropout": 0.1})


def test_data_dependent_control_flow():
    msg = raises_untouched(DataDependent(), CaptureError, "could not capture DataDependent", base_width=32,
                           example_inputs=(X16,))
    assert "data-dependent" in msg


def test_no_width_found_single_linear():
    msg = raises_untouched(nn.Linear(64, 64), WidthError, "no width dimension found", base_width=32)
    assert "Parameter shapes: {weight: (64, 64), bias: (64,)}" in msg and "pass width=" in msg
    mu = muplify(nn.Linear(64, 64), base_width=32, width=64)  # what the message suggests: the output dim scales
    assert mu.plan["weight"].role == "input" and str(mu.plan["weight"].fan_out) == "w"


def test_width_argument_matches_nothing():
    msg = raises_untouched(_mlp(), WidthError, "width=48 matches no parameter dimension", base_width=32, width=48)
    assert "[4, 16, 64]" in msg


def test_muplify_twice():
    mu = muplify(_mlp(), base_width=32)
    raises_untouched(mu, MuplifyError, "already muplified; call muplify\\(\\) once", base_width=32)
    raises_untouched(mu, MuplifyError, "already muplified", plan=mu.plan)
    assert sum(isinstance(h, MuScale) for m in mu.modules() for h in m._forward_pre_hooks.values()) == 1


@pytest.mark.parametrize("other", ["wider", "other_architecture"])
def test_plan_file_for_another_model(tmp_path, other):
    path = str(tmp_path / "plan.json")
    muplify(_mlp(64), base_width=32).plan.to_json(path)
    if other == "wider":
        msg = raises_untouched(_mlp(128), PlanError, "the plan does not match this MLP", plan=path)
        assert "shape mismatches (name, model, plan): ('net.0.weight', (128, 16), (64, 16))" in msg
    else:
        torch.manual_seed(0)
        msg = raises_untouched(build("gpt_untied", 64)[0], PlanError, r"does not match this GPT \(plan made for MLP\)",
                               plan=path)
        assert "parameters in the plan but not in the model: ['net.0.weight'" in msg


def test_plan_file_that_is_not_a_plan(tmp_path):
    path = tmp_path / "notaplan.json"
    path.write_text(json.dumps({"lr": 3e-3}))
    raises_untouched(_mlp(), PlanError, "not a muplify plan", plan=str(path))


def test_plan_with_other_base_width():
    plan = muplify(_mlp(), base_width=32).plan
    raises_untouched(_mlp(), PlanError, "base_width=16 disagrees with the plan's base_width=32", plan=plan,
                     base_width=16)


@pytest.mark.parametrize("route", ["analysis", "plan="])
def test_hp_tuned_under_other_roles(route):
    """hp["tuned_roles"] (what tune records in best["hp"]) that this model reads otherwise: refused, listed."""
    from muplify import RolesMismatchError
    from muplify.tuned_roles import role_signature

    plan = muplify(_mlp(), base_width=32).plan
    roles = role_signature(plan)
    readout = next(n for n, p in plan.params.items() if p.readout and n.endswith("weight"))
    roles[readout] = ["hidden", True, True]
    kw = {"base_width": 32} if route == "analysis" else {"plan": plan}
    msg = raises_untouched(_mlp(), RolesMismatchError, r"this model's roles differ from those the hyperparameters "
                           r"were tuned under \(1 parameters: " + readout.replace(".", r"\.") +
                           ": tuned as hidden, the target reads output", hp={"tuned_roles": roles}, **kw)
    assert "overrides=" in msg and "base=" in msg


@pytest.mark.parametrize("edit", ["where", "role", "factor"])
def test_hand_edited_plan_with_invalid_entries(edit):
    model = SharedHidden()
    d = muplify(copy.deepcopy(model), base_width=32, example_inputs=(X16,)).plan.to_dict()
    d["sites"].append(dict(d["sites"][0], module="b"))  # a second, valid site before the bad one ...
    d["sites"][0], d["sites"][-1] = d["sites"][-1], d["sites"][0]
    if edit == "where":
        d["sites"][-1]["where"] = "middle"  # ... so a half-applied plan would leave a hook behind
    elif edit == "role":
        d["params"][0]["role"] = "embedding"
    else:
        d["params"][-1]["user_lr_mult"] = float("nan")
    raises_untouched(model, PlanError, "invalid plan entries", plan=Plan.from_dict(d))


@pytest.mark.parametrize("overrides, match", [({"nothing.*": {"role": "hidden"}}, "matches no parameter"),
                                              ({"net.2.weight": {"role": "hiden"}}, "role must be one of"),
                                              ({"net.2.weight": {"fan_in": 3}}, "cannot override")])
def test_bad_overrides(overrides, match):
    raises_untouched(_mlp(), PlanError, match, base_width=32, overrides=overrides)


def test_unknown_optimizer_class():
    mu = muplify(_mlp(), base_width=32)
    msg = raises_untouched(mu, OptimizerRuleError, "muplify has no μP rule for Lion",
                           fn=lambda m: m.optimizer(Lion, lr=1e-3))
    assert "rule='adam'" in msg and "rule='sgd'" in msg and "register_rule" in msg
    assert "Known: " in msg and "AdamW" in msg and "SGD" in msg
    opt = mu.optimizer(Lion, lr=1e-3, rule="adam")  # the fix the message gives
    assert {g["mup_roles"]: g["lr_mult"] for g in opt.param_groups}["hidden"] == 0.5
    with pytest.raises(OptimizerRuleError, match="rule must be one of .*'adam'.*'sgd'"):
        mu.optimizer(Lion, lr=1e-3, rule="lion")
    register_rule(Lion, "sgd")
    try:
        groups = mu.optimizer(Lion, lr=1e-3).param_groups
        assert next(g for g in groups if "input" in g["mup_roles"])["lr_mult"] == 2.0  # SGD rule: input lr x m
    finally:
        OPTIMIZER_FAMILIES.pop(Lion)


# ------------------------------------------------------------------------------------------------ accepted on purpose
def test_width_smaller_than_base_width_is_allowed():
    """μP is defined for width_mult < 1: every multiplier is the inverse of the widening case (> 1 here)."""
    torch.manual_seed(0)
    model, args, _ = build("gpt_untied", 32)
    ref = copy.deepcopy(model)
    mu = muplify(model, base_width=64, example_inputs=args)
    assert mu.plan.width_mult == 0.5
    assert [(f.reason, f.factor) for f in mu.plan.forward] == [("readout", 2.0)]
    hidden = mu.plan["blocks.0.mlp.0.weight"]
    assert hidden.role == "hidden" and hidden.lr_mult["adam"] == 2.0 and hidden.wd_mult["adam"] == 0.5
    # GPT-2 style N(0, 0.02) init is fixed-std: hidden weights are scaled up by 1/sqrt(m) = sqrt(2)
    torch.testing.assert_close(mu.blocks[0].mlp[0].weight, ref.blocks[0].mlp[0].weight * 2 ** 0.5)
    std = mu.to_standard()  # the readout multiplier 2 folded into the readout weight
    torch.testing.assert_close(std.lm_head.weight, mu.lm_head.weight * 2.0)
    torch.testing.assert_close(std(*args), mu(*args), rtol=1e-5, atol=1e-5)
    opt = mu.optimizer(torch.optim.AdamW, lr=1e-3)
    assert sorted(g["lr_mult"] for g in opt.param_groups) == [1.0, 2.0]


def test_non_float_parameters_are_left_alone():
    torch.manual_seed(0)
    model = WithIndex()
    keep = model.keep.detach().clone()
    mu = muplify(model, base_width=32, example_inputs=(X16,))
    e = mu.plan["keep"]
    assert (e.role, e.init_scale, e.lr_mult["adam"], e.lr_mult["sgd"]) == ("fixed", 1.0, 1.0, 1.0)
    assert "non-float" in e.note and not e.fan_out.free_symbols
    assert torch.equal(mu.keep, keep) and mu.keep.dtype == torch.int64
    opt = mu.optimizer(torch.optim.AdamW, lr=1e-3)
    assert all(p is not mu.keep for g in opt.param_groups for p in g["params"])
    mu(X16).pow(2).mean().backward()
    opt.step()
    mu.to(torch.float64)
    assert mu.keep.dtype == torch.int64 and mu(X16.double()).dtype == torch.float64
    c = copy.deepcopy(mu)
    assert torch.equal(c.keep, keep)
    assert torch.equal(mu.to_standard().keep, keep)
    again = muplify(WithIndex(), plan=mu.plan)
    again.load_state_dict(mu.state_dict())
    assert torch.equal(again.keep, keep)


def test_weights_shared_across_unrelated_modules():
    torch.manual_seed(0)
    model = SharedHidden()
    mu = muplify(model, base_width=32, example_inputs=(X16,))
    e = mu.plan["b.weight"]
    assert mu.plan["c.weight"] is e and e.aliases == ["b.weight", "c.weight"]
    assert e.role == "hidden" and e.lr_mult["adam"] == 0.5
    assert "c.weight" not in mu.plan.params  # one entry, one treatment
    opt = mu.optimizer(torch.optim.AdamW, lr=1e-3)
    assert sum(p is mu.b.weight for g in opt.param_groups for p in g["params"]) == 1
    before = mu.b.weight.detach().clone()
    mu(X16).pow(2).mean().backward()
    opt.step()
    assert mu.c.weight is mu.b.weight and not torch.equal(mu.b.weight, before)
    std = mu.to_standard()
    assert std.c.weight is std.b.weight  # no multiplier on it: nothing to untie
    torch.testing.assert_close(std(X16), mu(X16))
