"""Parametrizations: what a width (and depth) change does to each parameter — its init scale, the learning-rate,
weight-decay and ε factors per role × optimizer update rule, what happens at each multiplier site, and the depth
rule.  One :class:`Parametrization` object per parametrization, registered with :func:`register_parametrization`
and chosen by ``muplify(..., parametrization=...)``.

Registered:

* ``"mup"`` — the Maximal Update Parametrization (TP-V Tables 3 and 8, CompleteP for depth): forward multipliers at
  the plan's sites (module hooks), the rest absorbed into parameters.
* ``"sp"`` — the standard parametrization: nothing changes with width or depth (init, learning rates, ε and
  multipliers as written; only ``hp`` constants apply, as if written by hand), so baselines run through the same
  plan, optimizer and tools.
* ``"spectral"`` — the spectral condition (Yang, Simon & Bernstein 2023, arXiv 2310.17813): ‖W‖ and ‖ΔW‖ ∝
  √(fan_out/fan_in) with no forward multipliers: every μP multiplier absorbed into its parameter's init and
  learning rate (init σ ∝ (1/√fan_in)·min(1, √(fan_out/fan_in)); Adam lr ∝ 1/fan_in, SGD lr ∝ fan_out/fan_in, Muon
  lr ∝ √(fan_out/fan_in)).  Where a multiplier cannot be moved into a parameter of its own (a tied readout, a
  fused projection's slice, a site with no weight producing it linearly) it refuses with a PlanError.

``m_in = fan_in/base_fan_in``, ``m_out`` likewise, ``m = width/base_width``, ``m_L = depth/base_depth``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..errors import PlanError
from ..plan import ParamPlan, Plan
from .families import OptimizerFamily, UpdateRule
from .site_kinds import SiteKind, SiteUse, depth_mult

__all__ = ["Parametrization", "MuP", "Standard", "Spectral", "PARAMETRIZATIONS", "register_parametrization",
           "get_parametrization", "parametrization_of", "width_init_factor"]


def width_init_factor(rule: str, role: str, m_in: float, m_out: float) -> float:
    """Factor turning values drawn by ``rule`` at this width into μP values relative to the base init.

    TP-V Table 8: hidden var σ²_base/m_in; input and output σ²_base; vectors unchanged.  σ_base is what the user's
    rule draws at base width: a fixed-std rule (GPT-2's 0.02) the same σ, a fan-in scaled rule σ·√m_in, a fan-out
    scaled one σ·√m_out."""
    if rule not in ("fan_in", "fan_out", "fixed") or role in ("vector", "fixed"):
        return 1.0
    base_over_now = {"fixed": 1.0, "fan_in": math.sqrt(m_in), "fan_out": math.sqrt(m_out)}[rule]
    target_over_base = 1.0 / math.sqrt(m_in) if role == "hidden" else 1.0
    return base_over_now * target_over_base


# μP learning-rate rule per update rule (TP-V Table 3; spectral μP for orthogonalised updates)
def _lr_adaptive(p: ParamPlan) -> float:
    return 1.0 / p.width_mult_in if p.role == "hidden" else 1.0  # input, output (with its 1/m_in), vector: unchanged


def _lr_gradient(p: ParamPlan) -> float:  # the `mup` package's MuSGD
    return {"input": p.width_mult_out, "vector": p.width_mult_out, "hidden": p.width_mult_out / p.width_mult_in,
            "output": p.width_mult_in, "fixed": 1.0}[p.role]


def _lr_relative(p: ParamPlan) -> float:
    # Δ ≈ lr·RMS(W) per entry; μP wants Adam's Δ (hidden 1/m_in) and μP init gives hidden RMS(W) ∝ 1/√m_in, so hidden
    # lr ∝ 1/√m_in; roles whose init does not shrink keep lr.  Holds while lr·lr_mult < 1/√t (Adafactor's step cap).
    return 1.0 / math.sqrt(p.width_mult_in) if p.role == "hidden" else 1.0


def _lr_orthogonalized(p: ParamPlan) -> float:
    return math.sqrt(p.width_mult_out / p.width_mult_in)  # ‖ΔW‖₂ ∝ √(fan_out/fan_in), ‖O‖₂ ≈ 1


MUP_LR = {UpdateRule.ADAPTIVE: _lr_adaptive, UpdateRule.SIGN: _lr_adaptive, UpdateRule.GRADIENT: _lr_gradient,
          UpdateRule.RELATIVE: _lr_relative, UpdateRule.ORTHOGONALIZED: _lr_orthogonalized}


class Parametrization:
    """One parametrization.  The defaults are μP's rules; a subclass overrides what differs.

    ``hooks``: whether multipliers are applied at their sites as module hooks (False: every one is absorbed into
    the parameters it folds into, or refused).  ``widths``: whether width / depth factors apply at all (False:
    the standard parametrization, only ``hp`` constants)."""

    name: str = ""
    description: str = ""
    hooks: bool = True
    widths: bool = True
    lr_rules: Mapping[UpdateRule, Any] = MUP_LR

    # -- init
    def init_factor(self, p: ParamPlan, plan: Plan) -> float:
        """Width factor on the current values (the policy multiplies in absorbed multipliers and hp)."""
        if not self.widths or plan.options.init is None:
            return 1.0
        if p.bias_of is not None and p.bias_of in plan.params:
            # PyTorch draws a bias from U(±1/√fan_in of its layer): restore its base-width scale
            return math.sqrt(plan.params[p.bias_of].width_mult_in) if p.init_rule == "fan_in" else 1.0
        return width_init_factor(p.init_rule, p.role, p.width_mult_in, p.width_mult_out)

    # -- learning rate
    def width_lr(self, p: ParamPlan, plan: Plan, family: OptimizerFamily, options: Mapping[str, Any]) -> float:
        """The learning-rate factor of ``p`` under ``family`` from width (1 at base width)."""
        if not self.widths:
            return 1.0
        if family.has_own_width_rule():
            return family.width_lr(p, plan, options)
        rule = self.lr_rules.get(family.update)
        if rule is None:
            raise PlanError(f"parametrization {self.name!r} has no learning-rate rule for {family.update} "
                            f"(optimizer family {family.name!r})")
        return family.adjust_step(rule(p), p, options)

    def depth_lr(self, p: ParamPlan, plan: Plan, family: OptimizerFamily) -> float:
        """CompleteP (Dey et al. 2025, Table 1): Adam-like hidden and vector lr × m_L^(α−1)."""
        m_l = depth_mult(plan)
        if not self.widths or m_l == 1.0 or p.role not in ("hidden", "vector") or not p.in_branch:
            return 1.0
        alpha = plan.options.depth_alpha
        if family.update is UpdateRule.GRADIENT:
            # SGD: the branch multiplier m_L^-α scales both the branch's gradient and its effect on the output, so
            # an SGD update moves the output by lr·m_L^(-2α); CompleteP's per-branch ΔF ∝ 1/L needs lr × m_L^(2α−1)
            return m_l ** (2 * alpha - 1)
        return m_l ** (alpha - 1)

    # -- ε
    def eps_factor(self, p: ParamPlan, plan: Plan) -> float:
        """Adam ε relative to the gradient scale: under μP every gradient below the readout shrinks like 1/m (the
        backpropagated signal carries the readout's 1/m), so a fixed ε would grow relative to it (Megatron,
        CompleteP scale ε down with width).  Fixed-role parameters (e.g. the readout bias) see Θ(1) gradients.
        CompleteP adds ε × m_L^-α for parameters inside residual branches."""
        if not self.widths or plan.options.eps != "scaled" or p.role == "fixed":
            return 1.0
        eps = 1.0 / plan.width_mult
        m_l = depth_mult(plan)
        if m_l != 1.0 and p.in_branch:
            eps *= m_l ** (-plan.options.depth_alpha)
        return eps

    # -- multipliers
    def site_factor(self, kind: SiteKind, plan: Plan, use: SiteUse) -> float | None:
        """The multiplier at one site (None: none)."""
        return kind.factor(plan, use, self.widths)

    def absorb_site(self, kind: SiteKind, plan: Plan, use: SiteUse, factor: float) -> dict[str, float]:
        """Where a site multiplier goes when ``hooks`` is False: {parameter: factor}; raises when it cannot."""
        raise PlanError(f"parametrization {self.name!r} applies no forward hooks and cannot absorb the {kind.name} "
                        f"multiplier at '{use.site.module if use.site else '?'}'")

    def __repr__(self) -> str:
        return f"<parametrization {self.name!r}: {self.description}>"


class MuP(Parametrization):
    name = "mup"
    description = "Maximal Update Parametrization (TP-V; CompleteP with base_depth): forward multipliers at sites"


class Standard(Parametrization):
    name, widths = "sp", False
    description = "standard parametrization: nothing scales with width or depth (hp constants only)"


class Spectral(Parametrization):
    name, hooks = "spectral", False
    description = ("spectral condition (Yang, Simon & Bernstein 2023): ‖W‖, ‖ΔW‖ ∝ √(fan_out/fan_in); every "
                   "multiplier in init and per-layer learning rate, no forward hooks")

    def absorb_site(self, kind, plan, use, factor):
        site, where = use.site, f"'{use.site.module}'" if use.site is not None else "an attention op"
        what = f"the {kind.name} multiplier x{factor:.4g} at {where}"
        advice = "What to do: use parametrization='mup' (it applies the multiplier as a forward hook)"
        p = use.param
        if p is not None and len(p.aliases) > 1:
            raise PlanError(f"parametrization='spectral' cannot express {what}: the {kind.name} weight is tied (one "
                            f"tensor: {', '.join(p.aliases)}; its init and learning rate serve every use), so the "
                            f"multiplier cannot live in its weights. {advice}, or untie the weights.")
        if site is None or not site.fold:
            raise PlanError(f"parametrization='spectral' cannot express {what}: no weight produces that tensor "
                            f"linearly, so it cannot be moved into a parameter. {advice}.")
        out: dict[str, float] = {}
        for t in site.fold:
            q = plan.params.get(t.param)
            if t.axis is not None:
                raise PlanError(f"parametrization='spectral' cannot express {what}: it belongs to a slice "
                                f"[{t.start}:{t.stop}] of {t.param} (a fused projection), and a slice has no "
                                f"learning rate of its own. {advice}, or split the projection.")
            if q is not None and len(q.aliases) > 1:
                raise PlanError(f"parametrization='spectral' cannot express {what}: it would move into {t.param}, "
                                f"which is tied to {', '.join(q.aliases[1:])}. {advice}.")
            out[t.param] = out.get(t.param, 1.0) * factor
        return out


PARAMETRIZATIONS: dict[str, Parametrization] = {}


def register_parametrization(param: Parametrization) -> Parametrization:
    """Register a parametrization under its name (a taken name raises)."""
    if not isinstance(param, Parametrization) or not param.name:
        raise PlanError("register_parametrization needs a Parametrization instance with a name")
    old = PARAMETRIZATIONS.get(param.name)
    if old is not None and old is not param:
        raise PlanError(f"a parametrization named {param.name!r} is already registered ({old!r})")
    PARAMETRIZATIONS[param.name] = param
    return param


def get_parametrization(which: "str | Parametrization") -> Parametrization:
    """A registered parametrization by name, or a Parametrization instance (registered on first use)."""
    if isinstance(which, Parametrization):
        return register_parametrization(which)
    if isinstance(which, str) and which in PARAMETRIZATIONS:
        return PARAMETRIZATIONS[which]
    raise PlanError(f"parametrization must be one of {sorted(PARAMETRIZATIONS)} or a muplify.policy."
                    f"Parametrization instance, got {which!r}")


def parametrization_of(plan: Plan) -> Parametrization:
    return get_parametrization(plan.options.parametrization)


for _p in (MuP(), Standard(), Spectral()):
    register_parametrization(_p)
del _p
