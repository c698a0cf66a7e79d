"""The horizon fit (issue 17 §2): ``tune(..., horizons=[S1, S2, S3])`` sweeps the proxy at each step count (the
objective gets ``steps=``), fits each tuned value's optimum as ``a * S**b``, records it in the study and in
``result.best``; ``transfer(..., steps=S)`` and the CLI extrapolate it, composed with the regime rules."""
from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

pytest.importorskip("optuna")

import muplify  # noqa: E402
from muplify.models import MLP  # noqa: E402
from muplify.tools.tune import Choice, LogUniform, TuneError, transfer  # noqa: E402
from muplify.tools.tune.horizons import PowerLaw, at_horizon, fit_power_law, horizon_optimum  # noqa: E402
from muplify_dev.tasks import fit_regression  # noqa: E402

WIDTH = 8
HS = [4, 8, 16]
SPACE = {"lr": LogUniform(1e-3, 1.0)}
RUNS: list[int] = []  # the steps= each objective run got


def make_model(width: int) -> torch.nn.Module:
    return MLP(in_features=8, width=width, out_features=4, depth=3)


def regression(model, optimizer, report, steps: int = 6, seed: int = 0) -> float:
    RUNS.append(steps)
    return fit_regression(model, optimizer, report, seed=seed, steps=steps)


def no_steps(model, optimizer, report) -> float:
    return fit_regression(model, optimizer, report)


def _tune(objective=regression, **kw):
    kw.setdefault("trials", 4)
    kw.setdefault("space", SPACE)
    return muplify.tune(make_model, WIDTH, objective, "AdamW", defaults=False, storage=None, progress=False,
                        pruner=None, **kw)


def _quiet(fn, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **k)


@pytest.fixture(scope="module")
def result():
    RUNS.clear()
    return _tune(horizons=[16, 4, 8])  # any order: sorted


def _lr_steps(opt) -> dict[str, float]:
    return {g["mup_roles"]: float(g["lr"]) * g["lr_mult"] for g in opt.param_groups}


# ------------------------------------------------------------------------------------------------ the fit
def test_power_law_fit_recovers_a_known_exponent_and_its_error():
    hs = [100, 200, 400, 800, 1600]
    exact = fit_power_law("lr", hs, [0.3 * s ** -0.4 for s in hs])
    assert exact.exponent == pytest.approx(-0.4) and exact.coef == pytest.approx(0.3)
    assert exact.stderr == pytest.approx(0.0, abs=1e-9) and exact.at(3200) == pytest.approx(0.3 * 3200 ** -0.4)
    noise = [0.05, -0.08, 0.02, 0.07, -0.06]  # log-space noise: b stays close, the error is > 0 and covers it
    noisy = fit_power_law("lr", hs, [0.3 * s ** -0.4 * math.exp(e) for s, e in zip(hs, noise)])
    assert abs(noisy.exponent + 0.4) < 2 * noisy.stderr and 0 < noisy.stderr < 0.1
    two = fit_power_law("lr", [100, 400], [1e-2, 5e-3])
    assert two.exponent == pytest.approx(-0.5) and two.stderr is None and "unknown" in two.uncertainty()
    assert PowerLaw.from_dict("lr", noisy.to_dict()) == noisy


# ------------------------------------------------------------------------------------------------ tune(horizons=)
def test_each_horizons_optimum_is_the_bowl_of_its_better_trials_not_one_noisy_trial():
    """A noisy bowl in log lr (optimum 2^-7, noise as large as the loss change over ±2 octaves) with a second
    searched axis: over 30 sweeps of 40 trials, the parabola through each sweep's better half lands nearer the
    optimum than the single best trial, which its noise picks; a one-sided landscape (no vertex among the trials)
    and too few trials fall back to the best trial."""
    space = {"lr": LogUniform(2 ** -12, 2 ** -2), "hp.output_mult": LogUniform(0.25, 4.0)}
    err_bowl, err_best, bowls = [], [], 0
    for seed in range(30):
        gen = torch.Generator().manual_seed(seed)
        xs = (torch.rand(40, generator=gen) * 10 - 12).tolist()  # log2 lr in [-12, -2]
        ms = (torch.rand(40, generator=gen) * 4 - 2).tolist()
        noise = (torch.randn(40, generator=gen) * 0.15).tolist()
        trials = [({"lr": 2.0 ** x, "hp": {"output_mult": 2.0 ** m}}, 0.03 * (x + 7) ** 2 + 0.01 * m ** 2 + e)
                  for x, m, e in zip(xs, ms, noise)]
        values, origin = horizon_optimum(space, trials)
        bowls += origin["lr"] == "bowl"
        err_bowl.append(abs(math.log2(values["lr"]) + 7))
        err_best.append(abs(math.log2(min(trials, key=lambda t: t[1])[0]["lr"]) + 7))
    assert bowls >= 25 and sum(err_bowl) < 0.7 * sum(err_best), (bowls, sum(err_bowl) / 30, sum(err_best) / 30)
    one_sided = [({"lr": 2.0 ** x, "hp": {"output_mult": 1.0}}, -x) for x in xs]  # lower loss at larger lr
    values, origin = horizon_optimum(space, one_sided)
    assert origin["lr"] == "best trial" and values["lr"] == max(2.0 ** x for x in xs)
    values, origin = horizon_optimum(space, trials[:4])
    assert set(origin.values()) == {"best trial"}


def test_tune_sweeps_each_horizon_tags_its_trials_and_fits_the_optima(result, tmp_path):
    assert sorted(set(RUNS)) == HS  # the objective trained for each horizon
    for h in HS:
        mine = [t for t in result.trials if t.horizon == h]
        assert len(mine) == 4 and all(t.config["objective"]["steps"] == h for t in mine)
    best = result.best
    assert best["regime"] == {"steps": 16} and best["objective"]["steps"] == 16
    assert best["value"] == min(t.value for t in result.trials if t.horizon == 16 and t.state == "complete")
    fit = best["horizon_fit"]["lr"]
    assert fit["horizons"] == HS and fit["stderr"] is not None
    for h, opt in zip(HS, fit["optima"]):  # 4 trials per horizon: too few for a bowl, the best trial's value
        done = [t for t in result.trials if t.horizon == h and t.state == "complete"]
        assert opt == min(done, key=lambda t: t.value).config["lr"]
    assert fit["optimum_from"] == ["best trial"] * len(HS)
    ref = fit_power_law("lr", HS, fit["optima"])
    assert fit["exponent"] == pytest.approx(ref.exponent) and fit["coef"] == pytest.approx(ref.coef)
    assert result.study.user_attrs["muplify.horizon_fit"] == best["horizon_fit"]  # recorded in the main study
    assert {p.horizon for p in result.phases} == set(HS) and "S=4" in result.budget()
    assert "horizon fit: lr = " in str(result)
    assert result.plot_horizons(str(tmp_path / "h.png")).endswith("h.png") and (tmp_path / "h.png").stat().st_size


def test_bad_horizons_are_refused_before_any_trial():
    RUNS.clear()
    for bad, match in (([0, 4], "positive ints"), ([4, 4, 8], "distinct"), ([8], "2 or more"), (8, "list"),
                       ([4, 8.0], "positive ints")):
        with pytest.raises(TuneError, match=match):
            _tune(horizons=bad)
    with pytest.raises(TuneError, match="takes no steps keyword"):
        _tune(no_steps, horizons=HS)
    with pytest.raises(TuneError, match="not both"):
        _tune(horizons=HS, steps=8)
    with pytest.raises(TuneError, match="sets objective.steps itself"):
        _tune(horizons=HS, space={**SPACE, "objective.steps": Choice([4, 8])})
    with pytest.raises(TuneError, match="searches none"):
        _tune(horizons=HS, space={"lr": Choice([1e-2, 1e-1])})
    assert RUNS == []


# ------------------------------------------------------------------------------------------------ transfer(steps=)
def test_transfer_extrapolates_the_fitted_lr_and_keeps_weight_decays_duration_rule(result):
    f = result.horizon_fit["lr"]
    target = 64
    mu, opt = _quiet(transfer, make_model, result.best, "AdamW", width=4 * WIDTH, steps=target)
    plain = {k: v for k, v in result.best.items() if k not in ("horizon_fit", "regime")}
    _, ref = _quiet(transfer, make_model, {**plain, "lr": f.at(target)}, "AdamW", width=4 * WIDTH)
    got, want = _lr_steps(opt), _lr_steps(ref)  # a*S^b times the μP width factor of each group
    assert "hidden" in got and got == pytest.approx(want)
    assert got["hidden"] == pytest.approx(f.at(target) / 4)  # hidden lr: 1/width-ratio under μP with Adam
    for g, r in zip(opt.param_groups, ref.param_groups):  # lr fitted: weight decay keeps its κ_S = 64/16 rule
        assert g["wd_mult"] == pytest.approx(r["wd_mult"] / 4)
        assert "lr = " in g["mup_horizon"] and "-> " in g["mup_horizon"]
    assert any(n.startswith("horizon fit at 64 steps") for n in mu.plan.notes)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # 10x the largest horizon: no warning
        at_horizon(result.best, 160)
    with pytest.warns(UserWarning, match="far outside the fitted range"):
        at_horizon(result.best, 161)
    _, same = _quiet(transfer, make_model, result.best, "AdamW", width=4 * WIDTH)  # no steps: the best as tuned
    assert _lr_steps(same)["hidden"] == pytest.approx(result.best["lr"] / 4)


def test_a_fitted_weight_decay_replaces_its_duration_rule(result):
    best = json.loads(json.dumps(result.best))
    best["optimizer"]["weight_decay"] = 0.1
    best["horizon_fit"]["optimizer.weight_decay"] = fit_power_law("optimizer.weight_decay", HS,
                                                                  [0.2, 0.1, 0.05]).to_dict()
    _, opt = _quiet(transfer, make_model, best, "AdamW", width=4 * WIDTH, steps=64)
    plain = {k: v for k, v in best.items() if k not in ("horizon_fit", "regime")}
    _, ref = _quiet(transfer, make_model, {**plain, "optimizer": {"weight_decay": 0.0125}}, "AdamW", width=4 * WIDTH)
    for g, r in zip(opt.param_groups, ref.param_groups):
        assert g["weight_decay"] == pytest.approx(0.0125) and g["wd_mult"] == pytest.approx(r["wd_mult"])
        assert "duration rule is not applied to the fitted optimizer.weight_decay" in g["mup_horizon"]


# ------------------------------------------------------------------------------------------------ the CLI
def test_cli_tune_horizons_then_transfer_steps_round_trip(tmp_path, capsys):
    from muplify.cli import main

    out = tmp_path / "best.json"
    common = ["muplify.models:MLP", "--width-arg", "width", "--arg", "in_features=8", "--arg", "out_features=4",
              "--arg", "depth=3"]
    assert _quiet(main, ["tune", *common, "--objective", "muplify_dev.tasks:fit_regression", "--width", str(WIDTH),
                         "--trials", "3", "--no-default-space", "--space", "lr=LogUniform(1e-3, 1.0)", "--pruner",
                         "none", "--storage", f"sqlite:///{tmp_path / 't.db'}", "--horizons", "2", "4", "--quiet",
                         "--out", str(out)]) == 0
    assert (tmp_path / "best_horizons.png").exists()
    best = json.loads(out.read_text())
    f = PowerLaw.from_dict("lr", best["horizon_fit"]["lr"])
    assert f.horizons == [2, 4] and f.stderr is None
    from muplify.tools.tune import load_result

    stored = load_result(f"sqlite:///{tmp_path / 't.db'}", "muplify-tune")  # the main study holds the fit
    assert stored.best["horizon_fit"] == best["horizon_fit"] and {t.horizon for t in stored.trials} == {4}
    capsys.readouterr()
    assert _quiet(main, ["transfer", *common, "--width", str(4 * WIDTH), "--hp", str(out), "--steps", "16"]) == 0
    text = capsys.readouterr().out
    assert "horizon fit at 16 steps: lr = " in text and "± unknown (2 horizons" in text
    assert f"mu.optimizer(AdamW, lr={f.at(16)!r}, steps=16)" in text
    hidden = next(line for line in text.splitlines() if line.strip().startswith("hidden ("))
    assert f"lr {f.at(16) / 4:.4g}," in hidden
