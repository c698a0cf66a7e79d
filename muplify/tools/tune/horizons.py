"""The horizon fit: ``tune(..., horizons=[S₁, S₂, S₃])`` and ``transfer(..., steps=S)``.

The proxy sweep runs at each horizon (the objective is called with ``steps=S``); the optimum of every searched
continuous value (``LogUniform``/``Uniform``: lr, weight decay, multipliers) at each horizon is fitted against the
horizon as a power law ``v(S) = a·S^b`` (least squares in log-log, as DeepSeek LLM 2024 and Power Lines fit the lr
optimum against the token horizon); with 3+ horizons the exponent's standard error comes with it, with 2 it is
unknown.  Each horizon's optimum of a value is the vertex of a parabola fitted to the loss of the horizon's better
trials against that value (log scale for a LogUniform), as DeepSeek LLM reads an optimum off a bowl rather than one
noisy trial; with fewer than :data:`BOWL_MIN_TRIALS` trials, or a parabola that does not open upward with its vertex
among the trials, it is the best trial's value (``optimum_from`` says which, per horizon).  :func:`at_horizon` evaluates the fits at the target's ``steps`` for :func:`~.trial.transfer` and the CLI.

How it composes with the regime rules (:mod:`muplify.policy.regime`): a fitted value *is* the duration rule for that
value, so the duration factor κ_S is not applied on top of it.  Today κ_S acts only on decoupled weight decay
(:data:`~muplify.policy.regime.DURATION_ACTS_ON`; lr has no duration rule), so a fitted lr leaves weight decay's
κ_S rule in place, and a fitted ``optimizer.weight_decay`` drops it (the optimizer is then built without ``steps=``).
The batch-size rules apply to the extrapolated values as to any other (the fit is at the proxy's batch size).
"""
from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ...policy.regime import DURATION_ACTS_ON
from .space import Dist, LogUniform, TuneError, Uniform, assemble, config_value

FIT_KEY = "horizon_fit"  # result.best[FIT_KEY] = {flat key: PowerLaw.to_dict()}
FIT_ATTR = "muplify.horizon_fit"  # the same, as a user attribute of the main study
FAR = 10  # transfer warns beyond FAR x the largest tuned horizon
FITTED = (LogUniform, Uniform)  # the entries whose optimum is fitted (continuous, searched)
BOWL_MIN_TRIALS = 5  # a parabola (3 coefficients) through fewer points has too few residuals to trust
BEST_TRIAL, BOWL = "best trial", "bowl"


@dataclass(frozen=True)
class PowerLaw:
    """``v(S) = coef · S^exponent``, fitted to the optimum of one value at each tuned horizon."""

    key: str  # the flat space key ("lr", "optimizer.weight_decay", "hp.output_mult")
    exponent: float  # b
    coef: float  # a
    stderr: float | None  # standard error of b (None with 2 horizons: unknown)
    horizons: list[int]
    optima: list[float]  # the optimum at each horizon
    optimum_from: list[str] | None = None  # per horizon: "bowl" (a parabola's vertex) or "best trial"

    def at(self, steps: float) -> float:
        return self.coef * steps ** self.exponent

    def uncertainty(self) -> str:
        return (f"± {self.stderr:.2g}" if self.stderr is not None
                else f"± unknown ({len(self.horizons)} horizons: no residual left to estimate it)")

    def __str__(self) -> str:
        origin = "" if not self.optimum_from or set(self.optimum_from) == {BEST_TRIAL} else \
            f"; optima from {', '.join(self.optimum_from)}"
        return f"{self.key} = {self.coef:.4g}·S^{self.exponent:+.3f} ({self.uncertainty()}; fitted on S = " \
               f"{', '.join(map(str, self.horizons))}{origin})"

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "key"}

    @classmethod
    def from_dict(cls, key: str, d: Mapping) -> "PowerLaw":
        return cls(key, float(d["exponent"]), float(d["coef"]), None if d.get("stderr") is None else float(d["stderr"]),
                   [int(s) for s in d["horizons"]], [float(v) for v in d["optima"]],
                   list(d["optimum_from"]) if d.get("optimum_from") else None)


def fit_power_law(key: str, horizons: Sequence[int], optima: Sequence[float],
                  optimum_from: Sequence[str] | None = None) -> PowerLaw:
    """Least squares of log v on log S; the exponent's standard error from the residuals (3+ points)."""
    if len(horizons) != len(optima) or len(horizons) < 2:
        raise TuneError(f"a power-law fit needs 2+ (horizon, optimum) pairs, got {len(horizons)}")
    if any(v <= 0 for v in optima):
        raise TuneError(f"{key}: a power law needs positive optima, got {list(optima)}")
    xs, ys = [math.log(s) for s in horizons], [math.log(v) for v in optima]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    a = my - b * mx
    se = None
    if n > 2:
        rss = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
        se = math.sqrt(rss / (n - 2) / sxx)
    return PowerLaw(key, b, math.exp(a), se, list(horizons), list(optima),
                    list(optimum_from) if optimum_from is not None else None)


def bowl_vertex(xs: Sequence[float], losses: Sequence[float]) -> float | None:
    """The vertex of the least-squares parabola of ``losses`` against ``xs``, when it opens upward and the vertex
    lies within the range of ``xs``; None otherwise (or with fewer than :data:`BOWL_MIN_TRIALS` points)."""
    import numpy as np

    if len(xs) < BOWL_MIN_TRIALS or max(xs) - min(xs) <= 0:
        return None
    c, b, _ = np.polyfit(np.asarray(xs, float), np.asarray(losses, float), 2)
    if not c > 0:
        return None
    vertex = float(-b / (2 * c))
    return vertex if min(xs) <= vertex <= max(xs) else None


def horizon_optimum(space: Mapping[str, Dist], trials: Sequence[tuple[Mapping, float]]
                    ) -> tuple[dict[str, float], dict[str, str]]:
    """Each searched LogUniform/Uniform value's optimum at one horizon, and where it came from, given the horizon's
    finished trials as ``(config, value)``: the vertex of the parabola through the better half of the trials (at
    least :data:`BOWL_MIN_TRIALS`; the loss against the value, log scale for a LogUniform) when there is one, else
    the best trial's value."""
    ranked = sorted(trials, key=lambda t: t[1])
    if not ranked:
        raise TuneError("no finished trial to read an optimum from")
    top = ranked[:max(BOWL_MIN_TRIALS, -(-len(ranked) // 2))]
    values, origin = {}, {}
    for key, d in space.items():
        if not isinstance(d, FITTED):
            continue
        best = float(config_value(ranked[0][0], key))
        log = isinstance(d, LogUniform)
        pts = [(float(config_value(c, key)), v) for c, v in top]
        if log and any(x <= 0 for x, _ in pts):
            pts = []
        vertex = bowl_vertex([math.log(x) if log else x for x, _ in pts], [v for _, v in pts])
        if vertex is None:
            values[key], origin[key] = best, BEST_TRIAL
        else:
            values[key], origin[key] = (math.exp(vertex) if log else vertex), BOWL
    return values, origin


def check_horizons(horizons: Sequence[int] | None, steps: int | None, objective: Any,
                   space: Mapping[str, Dist] | None) -> list[int] | None:
    """The horizons, sorted; a TuneError for a bad list or an objective that cannot be told the horizon."""
    from .trial import takes_keyword

    if horizons is None:
        return None
    hs = list(horizons) if isinstance(horizons, (list, tuple)) else None
    if hs is None or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in hs):
        raise TuneError(f"horizons must be a list of positive ints (optimizer steps), got {horizons!r}")
    if len(set(hs)) != len(hs):
        raise TuneError(f"horizons must be distinct, got {horizons!r}")
    if len(hs) < 2:
        raise TuneError(f"horizons= needs 2 or more step counts to fit an optimum against (3+ give its uncertainty), "
                        f"got {horizons!r}; for one horizon pass steps=")
    if steps is not None:
        raise TuneError("pass horizons= or steps=, not both: with horizons the proxy's steps are each horizon (the "
                        "largest is recorded in result.best['regime'])")
    if not takes_keyword(objective, "steps"):
        raise TuneError("horizons= calls the objective with steps=<horizon>, but it takes no steps keyword: define "
                        "objective(model, optimizer, report, steps) and train for that many steps")
    if "objective.steps" in (space or {}):
        raise TuneError("horizons= sets objective.steps itself (each horizon in turn): drop 'objective.steps' from "
                        "the space")
    return sorted(hs)


def fit_horizons(space: Mapping[str, Dist], trials: Mapping[int, Sequence[tuple[Mapping, float]]]
                 ) -> dict[str, PowerLaw]:
    """One :class:`PowerLaw` per searched LogUniform/Uniform key, from its optimum at each horizon
    (:func:`horizon_optimum` of ``trials``: horizon -> its finished trials as ``(config, value)``).  A key with a
    non-positive optimum is skipped with a warning."""
    hs = sorted(trials)
    optima = {h: horizon_optimum(space, trials[h]) for h in hs}
    fits = {}
    for key, d in space.items():
        if not isinstance(d, FITTED):
            continue
        vals = [optima[h][0][key] for h in hs]
        if any(v <= 0 for v in vals):
            warnings.warn(f"muplify.tune: horizon fit of {key} skipped: its optima {vals} are not all positive (a power "
                          "law needs positive values)", stacklevel=3)
            continue
        fits[key] = fit_power_law(key, hs, vals, [optima[h][1][key] for h in hs])
    return fits


def horizon_fits(config: Mapping) -> dict[str, PowerLaw]:
    """The fits recorded in ``config`` (``result.best``; empty when it has none)."""
    return {k: PowerLaw.from_dict(k, d) for k, d in (config.get(FIT_KEY) or {}).items()}


def at_horizon(config: Mapping, steps: int | None) -> tuple[dict, int | None, str | None]:
    """``config`` with each fitted value extrapolated to ``steps``, the ``steps=`` the optimizer's duration rule
    still gets (None when a fitted value is one the rule scales), and one line stating the fits; ``config``
    unchanged (and no line) without a fit or without ``steps``."""
    fits = horizon_fits(config)
    if steps is None or not fits:
        return dict(config), steps, None
    values = {k: f.at(steps) for k, f in fits.items()}
    out = with_values(config, values)
    top = max(max(f.horizons) for f in fits.values())
    if steps > FAR * top:
        warnings.warn(f"muplify.tune: the horizon fit is extrapolated to {steps} steps, {steps / top:.3g}x the largest "
                      f"tuned horizon ({top}): far outside the fitted range, the exponents' error grows with "
                      "log(S); tune at a longer horizon to narrow it", stacklevel=3)
    ruled = [k for k in fits if k.startswith("optimizer.") and k.partition(".")[2] in DURATION_ACTS_ON]
    text = (f"horizon fit at {steps} steps: " + "; ".join(f"{f} -> {values[k]:.4g}" for k, f in fits.items())
            + (f"; the duration rule is not applied to the fitted {', '.join(ruled)}" if ruled else ""))
    return out, (None if ruled else steps), text


def with_values(config: Mapping, values: Mapping[str, Any]) -> dict:
    """A copy of ``config`` with the flat keys of ``values`` set (``"hp.init_mult.input+output"`` sets both)."""
    out = copy.deepcopy(dict(config))
    part = assemble(values)
    if "lr" in values:
        out["lr"] = part["lr"]
    for head in ("hp", "optimizer", "objective"):
        for k, v in part[head].items():
            dst = out.setdefault(head, {})
            if isinstance(v, dict):
                dst.setdefault(k, {}).update(v)
            else:
                dst[k] = v
    return out
