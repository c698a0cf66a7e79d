"""The training regime: transfer from the proxy's batch size and duration to the real run's.

``muplify(..., base_batch_size=B₀, base_steps=S₀)`` records the proxy's regime; ``mu.optimizer(cls, ...,
batch_size=B, steps=S)`` applies the rule of the optimizer's family with κ_B = B/B₀ and κ_S = S/S₀ (each 1 when not
given).  One :class:`RegimeRule` object per optimizer family, registered with :func:`register_regime_rule`; a family
without one refuses ``batch_size=``/``steps=`` with an error naming it (Adam's rule is never applied to another
family).  At κ_B = κ_S = 1 nothing changes (every factor is exactly 1 and no group value is touched).

The rules (sources in docs/rules.md, "Batch size and training duration"):

* **Adam-like** (Adam, AdamW, NAdam, RAdam, RMSprop, SparseAdam): the SDE square-root rule (Malladi et al. 2022):
  lr × √κ_B, ε ÷ √κ_B, each EMA coefficient β → β^κ_B (the half-life of every average kept in *samples*; the first
  order of Malladi's 1 − κ_B(1 − β), and in (0, 1) for every κ_B, so it never leaves the valid range).
* **SGD** (SGD): the linear rule on the effective learning rate lr/(1 − μ) (Goyal et al. 2017; Smith et al. 2018's
  noise scale ε·N/(B(1 − μ))), the momentum μ → μ^κ_B by the same half-life rule.  In torch's undamped form
  (buf = μ·buf + g) that is lr × κ_B·(1 − μ^κ_B)/(1 − μ) (κ_B when μ = 0).
* **Decoupled weight decay** (AdamW; Adam/NAdam/RAdam with ``decoupled_weight_decay=True``; SGD, where L2 and
  decoupled decay coincide): the decay timescale 1/(lr_eff·wd) stays the same fraction of the run (Wang & Aitchison
  2024; Bergsma et al. 2025, "Power Lines"): wd ÷ (lr_eff factor · κ_S), so lr_eff·wd·steps is unchanged —
  wd ÷ (√κ_B·κ_S) for Adam-like, wd ÷ (κ_B·κ_S) for SGD.  An L2 penalty inside an adaptive optimizer's gradient
  (Adam's default, RMSprop) is part of the loss and stays as given.

The factors compose with the width (μP) and depth (CompleteP) factors: they multiply the group's ``lr_mult``,
``wd_mult`` and ``eps_mult``, which the step pre-hook applies to the values a scheduler writes; the averaging
coefficients are written into the group once.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import OptimizerRuleError

__all__ = ["Regime", "RegimeRule", "RegimeFactors", "REGIME_RULES", "REGIME_REFUSALS", "register_regime_rule",
           "regime_rule", "make_regime", "regime_summary", "DURATION_ACTS_ON"]

# the optimizer values the duration factor κ_S scales: decoupled weight decay only.  lr has no duration rule (its
# drift with the horizon is measured, not assumed: tune(..., horizons=) fits it, muplify/tools/tune/horizons.py, and
# a fitted value replaces the rule for that value)
DURATION_ACTS_ON = ("weight_decay",)


@dataclass(frozen=True)
class Regime:
    """The target run's regime relative to the proxy's: κ_B = batch_size/base_batch_size, κ_S = steps/base_steps."""

    batch_size: int | None = None
    steps: int | None = None
    base_batch_size: int | None = None
    base_steps: int | None = None

    @property
    def kappa_b(self) -> float:
        return 1.0 if self.batch_size is None else self.batch_size / self.base_batch_size

    @property
    def kappa_s(self) -> float:
        return 1.0 if self.steps is None else self.steps / self.base_steps

    @property
    def identity(self) -> bool:
        return self.kappa_b == 1.0 and self.kappa_s == 1.0

    def __str__(self) -> str:
        parts = []
        if self.batch_size is not None:
            parts.append(f"batch {self.base_batch_size} -> {self.batch_size} (κ_B {self.kappa_b:g})")
        if self.steps is not None:
            parts.append(f"steps {self.base_steps} -> {self.steps} (κ_S {self.kappa_s:g})")
        return ", ".join(parts) or "the proxy's regime (κ = 1)"


def _count(name: str, v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        return f"{name} must be a positive int, got {v!r}"
    return None


def make_regime(batch_size: Any, steps: Any, base_batch_size: int | None, base_steps: int | None) -> Regime:
    """The :class:`Regime` of ``mu.optimizer(..., batch_size=, steps=)``; a one-line OptimizerRuleError for bad
    input (nothing is built)."""
    for name, v in (("batch_size", batch_size), ("steps", steps)):
        why = _count(name, v)
        if why:
            raise OptimizerRuleError(why + " (the target run's " + ("samples per step)" if name == "batch_size"
                                                                     else "number of optimizer steps)"))
    if batch_size is not None and base_batch_size is None:
        raise OptimizerRuleError("batch_size= needs the proxy's batch size: pass base_batch_size= to muplify() (the "
                                 "batch size the hyperparameters were tuned at)")
    if steps is not None and base_steps is None:
        raise OptimizerRuleError("steps= needs the proxy's training length: pass base_steps= to muplify() (the "
                                 "number of steps the hyperparameters were tuned at)")
    return Regime(batch_size, steps, base_batch_size, base_steps)


@dataclass(frozen=True)
class RegimeFactors:
    """What a rule does to one param group: factors on lr / wd / ε (applied through the μP multipliers) and new
    values of the group's averaging coefficients."""

    lr: float = 1.0
    wd: float = 1.0
    eps: float = 1.0
    values: Mapping[str, Any] = field(default_factory=dict)  # group key -> new value (betas, momentum, alpha)
    notes: tuple[str, ...] = ()  # warnings (an average shorter than one step, ...)

    def describe(self, group: Mapping[str, Any]) -> str:
        out = [f"lr x{self.lr:.4g}"]
        if self.wd != 1.0:
            out.append(f"wd x{self.wd:.4g}")
        if self.eps != 1.0:
            out.append(f"eps x{self.eps:.4g}")
        for k, v in self.values.items():
            out.append(f"{k} {_fmt(group.get(k))} -> {_fmt(v)}")
        return ", ".join(out)


def _fmt(v: Any) -> str:
    if isinstance(v, (tuple, list)):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    try:
        return f"{float(v):.6g}"
    except (TypeError, ValueError):
        return repr(v)


def half_life_beta(beta: Any, kappa: float, what: str, notes: list[str]) -> Any:
    """β^κ: the EMA coefficient whose half-life in samples equals β's at κ× the batch (β ∈ [0, 1])."""
    if kappa == 1.0:
        return beta
    b = float(beta)
    if not 0.0 <= b <= 1.0:
        raise OptimizerRuleError(f"{what}={b!r} is not an averaging coefficient in [0, 1]; the batch-size rule "
                                 "keeps each average's half-life in samples (β -> β^κ_B)")
    new = b ** kappa
    if 0.0 < b < 1.0 and new >= 1.0:  # κ_B tiny: rounds to 1, which the optimizers reject; clamp
        new = math.nextafter(1.0, 0.0)
        notes.append(f"{what}: {b:g}^{kappa:g} rounds to 1; clamped to {new!r}")
    elif 0.0 < b and new < 0.5 <= b:
        notes.append(f"{what}: {b:g}^{kappa:g} = {new:.3g}: the average now spans less than one step (half-life "
                     f"{math.log(0.5) / math.log(new) if new > 0 else 0:.2g} steps); at κ_B = {kappa:g} the rule keeps "
                     "its half-life in samples, which one step now exceeds")
    return type(beta)(new) if isinstance(beta, float) else new


class RegimeRule:
    """The batch-size and duration rule of one optimizer family.

    ``lr_power``: lr × κ_B^lr_power (0.5: square-root rule, 1: linear rule).  ``eps_power``: ε × κ_B^-eps_power.
    ``ema``: group keys holding EMA coefficients (a tuple's every entry, or a scalar) that follow β → β^κ_B.
    ``heavy_ball``: group keys of an undamped momentum (buf = μ·buf + g), whose effective lr is lr/(1 − μ): the lr
    factor is corrected by (1 − μ^κ_B)/(1 − μ) so that the *effective* lr follows ``lr_power``.
    ``refuses``: optimizer class names this family holds but the rule does not cover, with why.
    ``source``: the citation (docs/rules.md)."""

    name: str = ""
    lr_power: float = 0.5
    eps_power: float = 0.5
    ema: tuple[str, ...] = ()
    heavy_ball: tuple[str, ...] = ()
    refuses: Mapping[str, str] = {}
    source: str = ""

    def check(self, cls: type) -> None:
        for k in getattr(cls, "__mro__", (cls,)):
            why = self.refuses.get(getattr(k, "__name__", ""))
            if why:
                raise OptimizerRuleError(f"no batch-size/duration rule for {cls.__name__} (family {self.name!r}): "
                                         f"{why}. What to do: omit batch_size=/steps= and re-tune at the target's "
                                         "regime, or use AdamW/SGD")

    def decoupled(self, cls: type, group: Mapping[str, Any]) -> bool:
        """Whether the group's weight decay is decoupled (a per-step decay lr·wd, not a loss term)."""
        return False

    def factors(self, cls: type, group: Mapping[str, Any], regime: Regime, eps_key: str | None) -> RegimeFactors:
        kb, ks = regime.kappa_b, regime.kappa_s
        notes: list[str] = []
        values: dict[str, Any] = {}
        for key in self.ema:
            v = group.get(key)
            if v is None or kb == 1.0:
                continue
            if isinstance(v, (tuple, list)):
                values[key] = type(v)(half_life_beta(b, kb, f"{key}[{i}]", notes) for i, b in enumerate(v))
            else:
                values[key] = half_life_beta(v, kb, key, notes)
        lr_eff = kb ** self.lr_power if kb != 1.0 else 1.0
        lr = lr_eff
        for key in self.heavy_ball:
            mu = group.get(key)
            if mu is None or kb == 1.0 or float(mu) == 0.0:
                continue
            new = half_life_beta(mu, kb, key, notes)
            values[key] = new
            lr *= (1.0 - float(new)) / (1.0 - float(mu))
        wd = 1.0
        if group.get("weight_decay") and self.decoupled(cls, group) and (kb != 1.0 or ks != 1.0):
            wd = 1.0 / (lr_eff * ks)
        eps = kb ** -self.eps_power if (eps_key is not None and kb != 1.0) else 1.0
        return RegimeFactors(lr, wd, eps, values, tuple(notes))


class AdamRegime(RegimeRule):
    name, lr_power, eps_power, ema, heavy_ball = "adam", 0.5, 0.5, ("betas", "alpha"), ("momentum",)
    refuses = {
        "Adagrad": "Adagrad sums squared gradients over the whole run (no EMA whose half-life the square-root rule "
                   "could keep)",
        "Adamax": "Adamax's second statistic is a running max of |g|, not an average whose noise scales as 1/√B",
    }
    source = "Malladi et al. 2022 (SDE square-root rule); Wang & Aitchison 2024, Bergsma et al. 2025 (weight decay)"

    def decoupled(self, cls, group):
        return cls.__name__ == "AdamW" or bool(group.get("decoupled_weight_decay", False))


class SGDRegime(RegimeRule):
    name, lr_power, eps_power, ema, heavy_ball = "sgd", 1.0, 0.0, (), ("momentum",)
    refuses = {"ASGD": "ASGD's averaging starts at step t0 and decays with its own step-count schedule"}
    source = ("Goyal et al. 2017 (linear rule), Smith et al. 2018 (noise scale with momentum); Wang & Aitchison "
              "2024 (weight decay)")

    def decoupled(self, cls, group):
        return True  # SGD: an L2 term decays the weights by lr·wd per step, exactly as decoupled decay


REGIME_RULES: dict[str, RegimeRule] = {}
REGIME_REFUSALS: dict[str, str] = {
    "sign": "no batch-size rule is established for sign updates (Lion, signSGD): the SDE square-root rule assumes an "
            "update normalised by a second-moment average, which a sign update lacks",
    "muon": "no batch-size rule is established for orthogonalised updates (Muon)",
    "adafactor": "torch's Adafactor has no β₂ constant: its decay schedule 1 - t^beta2_decay is in steps, and its "
                 "relative step is not covered by the square-root rule",
}


def register_regime_rule(family: str, rule: RegimeRule) -> RegimeRule:
    """Register the batch-size/duration rule of an optimizer family (by family name)."""
    if not isinstance(rule, RegimeRule):
        raise OptimizerRuleError("register_regime_rule needs a muplify.policy.RegimeRule instance")
    old = REGIME_RULES.get(family)
    if old is not None and old is not rule:
        raise OptimizerRuleError(f"family {family!r} already has a regime rule ({type(old).__name__}); remove it from "
                                 "muplify.policy.REGIME_RULES first")
    REGIME_RULES[family] = rule
    REGIME_REFUSALS.pop(family, None)
    return rule


def regime_rule(family: Any, cls: type) -> RegimeRule:
    """The rule of ``family`` (an OptimizerFamily) for optimizer class ``cls``; a one-line error naming the family
    when it has none."""
    rule = REGIME_RULES.get(family.name)
    if rule is None:
        why = REGIME_REFUSALS.get(family.name, "no rule is registered for it")
        raise OptimizerRuleError(f"no batch-size/duration rule for optimizer family {family.name!r} "
                                 f"({cls.__name__}): {why}. What to do: omit batch_size=/steps= and re-tune at the "
                                 "target's regime, or register one with muplify.policy.register_regime_rule")
    rule.check(cls)
    return rule


def regime_summary() -> str:
    """One line per registered rule, in κ (print(plan))."""
    parts = []
    for fam, r in REGIME_RULES.items():
        lr = "√κ_B" if r.lr_power == 0.5 else ("κ_B" if r.lr_power == 1 else f"κ_B^{r.lr_power:g}")
        bits = [f"lr x {lr}" + (" (effective lr/(1-μ))" if r.heavy_ball and not r.ema else "")]
        if r.ema or r.heavy_ball:
            bits.append(f"{'/'.join(r.ema + r.heavy_ball)} -> β^κ_B")
        if r.eps_power:
            bits.append(f"ε ÷ {lr}")
        bits.append(f"decoupled wd ÷ ({lr}·κ_S)")
        parts.append(f"{fam}: " + ", ".join(bits))
    return "; ".join(parts) + f" (none for {', '.join(sorted(REGIME_REFUSALS))}: refused)"


register_regime_rule("adam", AdamRegime())
register_regime_rule("sgd", SGDRegime())
