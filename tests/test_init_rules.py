"""Issue 18 item 2: the init rule of stock layers is recognised, the same for every seed, with named guesses.

Every ``torch.nn`` layer with a default init sits as a hidden layer between an input and a readout Linear; over 20
seeds its parameters get one init rule each (the rule torch's initialiser implies), and no seed adds a guess.  The
``nn.MultiheadAttention.in_proj_weight`` (Xavier-uniform, within 1.5 % of truncated kaiming(relu) fan_out) used to be
read 'fan_out' or 'fixed' by seed, and 'fixed' halved its init at 4× the base width."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from muplify import muplify
from muplify.initialization import INITIALIZERS, noise_tolerance, read_init

W, BASE = 128, 32


class Wrap(nn.Module):
    def __init__(self, layer: nn.Module, call):
        super().__init__()
        self.inp, self.layer, self.out, self.call = nn.Linear(8, W), layer, nn.Linear(W, 8), call

    def forward(self, x):
        return self.out(self.call(self.layer, self.inp(x)))


def _ch(f):  # (B, T, C) -> channels-first and back
    return lambda m, h: f(m, h.transpose(1, 2)).transpose(1, 2)


LAYERS = {
    "Linear": (lambda: nn.Linear(W, W), lambda m, h: m(h), {"weight": "fan_in", "bias": "fan_in"}),
    "Linear4x": (lambda: nn.Sequential(nn.Linear(W, 4 * W), nn.Linear(4 * W, W)), lambda m, h: m(h),
                 {"0.weight": "fan_in", "0.bias": "fan_in", "1.weight": "fan_in", "1.bias": "fan_in"}),
    "Conv1d": (lambda: nn.Conv1d(W, W, 3, padding=1), _ch(lambda m, h: m(h)), {"weight": "fan_in", "bias": "fan_in"}),
    "Conv2d": (lambda: nn.Conv2d(W, W, 3, padding=1), _ch(lambda m, h: m(h[..., None].expand(-1, -1, -1, 3))[..., 1]),
               {"weight": "fan_in", "bias": "fan_in"}),
    "ConvTranspose1d": (lambda: nn.ConvTranspose1d(W, W, 3, padding=1), _ch(lambda m, h: m(h)),
                        {"weight": "fan_in", "bias": "fan_in"}),
    "MultiheadAttention": (lambda: nn.MultiheadAttention(W, 4, batch_first=True),
                           lambda m, h: m(h, h, h, need_weights=False)[0],
                           {"in_proj_weight": "fan_in", "in_proj_bias": "zero", "out_proj.weight": "fan_in",
                            "out_proj.bias": "zero"}),
    "TransformerEncoderLayer": (lambda: nn.TransformerEncoderLayer(W, 4, 2 * W, batch_first=True), lambda m, h: m(h),
                                {"self_attn.in_proj_weight": "fan_in", "linear1.weight": "fan_in",
                                 "linear2.weight": "fan_in", "linear1.bias": "fan_in", "norm1.weight": "const",
                                 "norm1.bias": "zero"}),
    "LayerNorm": (lambda: nn.LayerNorm(W), lambda m, h: m(h), {"weight": "const", "bias": "zero"}),
}


def _plan(name: str, seed: int, width: int = W):
    make, call, _ = LAYERS[name]
    torch.manual_seed(seed)
    model = Wrap(make(), call)
    with _quiet():
        mu = muplify(model, base_width=BASE, example_inputs=(torch.randn(2, 5, 8),))
    return mu


class _quiet:
    def __enter__(self):
        import warnings
        self._c = warnings.catch_warnings()
        self._c.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *a):
        self._c.__exit__(*a)


@pytest.mark.parametrize("name", list(LAYERS))
def test_default_init_rule_is_the_same_for_20_seeds(name):
    expected = {f"layer.{k}": v for k, v in LAYERS[name][2].items()}
    seen = set()
    for seed in range(20):
        mu = _plan(name, seed)
        got = {n: mu.plan[n].init_rule for n in expected}
        assert got == expected, (seed, {n: (got[n], expected[n]) for n in expected if got[n] != expected[n]})
        assert not [s for s in mu.plan.notes if s.startswith("init of")], (seed, mu.plan.notes)
        seen.add(tuple(sorted((n, p.init_rule) for n, p in mu.plan.params.items())))
    assert len(seen) == 1, seen  # every parameter, not only the layer's: one decision for all 20 seeds


def test_mha_in_proj_init_is_not_rescaled_at_4x_width():
    """Xavier on a hidden (w → 3w) weight: σ ∝ 1/√m already, so μP leaves it (fan_in rule: √m · 1/√m = 1); read as
    'fixed' it was halved at m = 4."""
    for seed in range(20):
        torch.manual_seed(seed)
        model = Wrap(nn.MultiheadAttention(W, 4, batch_first=True), LAYERS["MultiheadAttention"][1])
        before = model.layer.in_proj_weight.detach().clone()
        with _quiet():
            mu = muplify(model, base_width=BASE, example_inputs=(torch.randn(2, 5, 8),))
        assert mu.plan.width_mult == 4
        assert torch.allclose(mu.layer.in_proj_weight.detach(), before), seed
        assert mu.plan["layer.in_proj_weight"].init_rule == "fan_in"


@pytest.mark.parametrize("init", [i for i in INITIALIZERS], ids=lambda i: i.name)
def test_each_known_initialiser_is_recognised(init):
    """A 512×512 hidden weight drawn by each initialiser: read as that initialiser (or one within noise that implies
    the same width rule), for 20 seeds."""
    fan = 512
    sigma = init.std(fan, fan)
    rules = set()
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        t = torch.randn(fan, fan, generator=g) * sigma
        r = read_init(t, fan, (fan,), in_scales=True, out_scales=True)
        rules.add((r.rule, r.initializer, r.guess != ""))
        assert abs(r.std / sigma - 1) < noise_tolerance(t.numel())
    assert len(rules) == 1, rules
    rule, name, guessed = rules.pop()
    want = {"fan_in": "fan_in", "fan_out": "fan_in", "xavier": "fan_in", "fixed": "fixed"}[init.kind]
    if not guessed:
        assert rule == want, (rule, name)


def test_two_rules_within_noise_give_a_named_guess_in_the_plan():
    """σ = 0.02 on a hidden weight of fan_in 2500 is both GPT-2's fixed 0.02 and LeCun's 1/√2500, which imply
    different width rules: the reading names both, takes the first listed, the same for every seed, and the plan's
    notes carry it.  With a fan_in that does not grow, the two imply the same rule: no guess."""
    readings = set()
    for seed in range(20):
        torch.manual_seed(seed)
        t = torch.randn(625, 2500) * 0.02
        r = read_init(t, 2500, (625,), in_scales=True, out_scales=True)
        readings.add((r.rule, r.initializer))
        assert r.guess and "lecun" in r.guess and "0.02" in r.guess
        assert not read_init(t, 2500, (625,), in_scales=False, out_scales=True).guess
    assert len(readings) == 1

    class Net(nn.Module):
        def __init__(self, w):
            super().__init__()
            self.inp, self.up, self.down, self.out = (nn.Linear(8, w), nn.Linear(w, 4 * w), nn.Linear(4 * w, w),
                                                      nn.Linear(w, 4))
            nn.init.normal_(self.down.weight, std=0.02)

        def forward(self, x):
            return self.out(self.down(torch.relu(self.up(self.inp(x)))))

    with _quiet():
        mu = muplify(Net(625), base_width=125, example_inputs=(torch.randn(2, 8),))
    notes = [s for s in mu.plan.notes if s.startswith("init of down.weight")]
    assert len(notes) == 1 and "GUESS" in notes[0], mu.plan.notes
    assert "init of down.weight" in str(mu.plan)


def test_a_std_no_initialiser_predicts_is_fixed():
    t = torch.randn(256, 256) * 0.037
    assert read_init(t, 256, (256,)).rule == "fixed"
    assert read_init(torch.zeros(4, 4), 4, (4,)).rule == "zero"
    assert read_init(torch.ones(4), 1, ()).rule == "const"
    assert math.isnan(read_init(torch.empty(4, 4, device="meta"), 4, (4,)).std)


# ------------------------------------------------------------------ the coordinate check's likely cause: init vs LR
def _records(step0_slope: float, step1_slope: float):
    records = []
    for w in (32, 64, 128):
        for t, s in enumerate((step0_slope, step1_slope)):
            rows = {"a": 0.5 * (w / 32) ** s, "b": 0.5, "head": 0.3 * (w / 32) ** -0.5}
            records += [dict(param="mup", width=w, seed=0, step=t, layer=k, size=v) for k, v in rows.items()]
    from muplify.tools.coord_result import CoordCheckResult
    return CoordCheckResult(records, widths=[32, 64, 128], steps=2, seeds=[0], parametrizations=["mup"],
                            readouts=["head"])


def test_likely_cause_tells_init_from_learning_rate():
    at_init = _records(-0.5, -0.5).likely_cause("mup")  # halved init: off before any update
    assert "step 0" in at_init and "init" in at_init and "not the learning rate" in at_init, at_init
    grows = _records(0.0, 0.6).likely_cause("mup")  # fine at init, grows after the first update
    assert "learning rate" in grows and "not the init" in grows and "already off at step 0" not in grows, grows


def test_a_wrong_init_rule_fails_the_coord_check_at_step_0_and_says_init():
    """Forcing init='fixed' on torch's default (fan-in) init halves the hidden weights at 4× the base width (σ ∝ 1/√m already, then 1/√m again): the
    check fails at step 0 and the sentence blames the init."""
    from muplify.models import MLP
    from muplify.tools.coord_check import coord_check

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 20, generator=g), torch.randint(0, 10, (64,), generator=g)
    with _quiet():
        res = coord_check(lambda w: MLP(in_features=20, width=w), x, labels=y, parametrizations=("mup",), seeds=1,
                          steps=2, muplify_kwargs={"init": "fixed"})
    assert not res.passed("mup")
    cause = res.likely_cause("mup")
    assert "already off at step 0" in cause and "init" in cause, cause


def test_a_round_fixed_std_wins_a_tie_with_a_fan_based_rule():
    """The built-in GPT draws N(0, 0.02) at every width; at d_model 1024 its 1024 x 4096 MLP weight's Xavier σ is
    0.0198, within noise of 0.02.  Read as Xavier, μP would leave the weight unscaled and the coordinate check fails at
    step 0 (the demo did); a round fixed std is the convention the user wrote."""
    import warnings

    from muplify import muplify
    from muplify.models import GPT

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mu = muplify(GPT(vocab_size=256, d_model=1024, n_layer=1), base_width=64)
    for n in ("blocks.0.mlp.0.weight", "blocks.0.mlp.2.weight"):
        assert mu.plan[n].init_rule == "fixed", (n, mu.plan[n].init_rule)
