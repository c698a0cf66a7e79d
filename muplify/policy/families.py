"""Optimizer families: optimizer *mechanics* only — which parameters an optimizer takes, the param-group key of its
ε, how its update scales with the gradient (:class:`UpdateRule`), its own shape-dependent step adjustment and its
default learning-rate range for tuning.  What a parametrization (μP, SP, spectral) does with an update rule lives in
:mod:`muplify.policy.parametrizations`; no family knows about μP.

A new family is one :class:`OptimizerFamily` instance passed to :func:`register_family` (with the optimizer classes
that follow it); registering a second family under a taken name raises.
"""
from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from typing import Any

from ..errors import OptimizerRuleError
from ..plan import ParamPlan, Plan

__all__ = ["UpdateRule", "OptimizerFamily", "FAMILIES", "OPTIMIZER_FAMILIES", "register_family", "register_rule",
           "family_for", "AdamFamily", "SignFamily", "SGDFamily", "AdafactorFamily", "MuonFamily"]


class UpdateRule(enum.Enum):
    """How an optimizer's update scales with the gradient ``g`` and the parameter ``W`` — what a parametrization
    needs to know to set its learning rate."""

    ADAPTIVE = "adaptive"  # entry-wise normalised (Adam): Δ independent of the scale of g
    SIGN = "sign"  # sign(·) of a gradient statistic (Lion): Adam's ε→0 limit
    GRADIENT = "gradient"  # Δ ∝ g (SGD)
    RELATIVE = "relative"  # normalised, times RMS(W) (Adafactor's relative step)
    ORTHOGONALIZED = "orthogonalized"  # Δ has spectral norm ≈ 1 (Muon)

    @property
    def absorb_power(self) -> float:
        """When a forward multiplier ``c`` is applied as parameter scaling (init × c), the learning rate must follow
        as ``c ** absorb_power`` for the training dynamics to be unchanged (g scales by c, W by c)."""
        return {UpdateRule.GRADIENT: 2.0, UpdateRule.RELATIVE: 0.0}.get(self, 1.0)


class OptimizerFamily:
    """How one kind of optimizer updates: subclass (or instantiate) and :func:`register_family`.

    ``update``: the :class:`UpdateRule`.  ``eps_key``: the param-group key of an ε added to a gradient-scale
    quantity (None: no such ε).  ``lr_range``: (low, high) of a wide log-scale learning-rate search for tuning.
    ``absorb_power`` defaults to the update rule's.

    A family may override ``width_lr(p, plan, options)`` to give its own μP learning-rate rule for an update rule
    muplify does not know (a Shampoo-type preconditioner); μP then uses it instead of the update rule's.
    """

    name: str = ""
    description: str = ""
    update: UpdateRule = UpdateRule.ADAPTIVE
    eps_key: str | None = None
    lr_range: tuple[float, float] = (1e-5, 1.0)
    absorb_power: float | None = None

    def __init__(self, **attrs: Any):
        for k, v in attrs.items():
            if not hasattr(type(self), k):
                raise OptimizerRuleError(f"OptimizerFamily has no attribute {k!r}; set name, description, update, "
                                         "eps_key, lr_range or absorb_power")
            setattr(self, k, v)
        if self.absorb_power is None:
            self.absorb_power = self.update.absorb_power

    def accepts(self, p: ParamPlan, plan: Plan) -> str | None:
        """None if this optimizer takes ``p``; otherwise why not (it then goes to a fallback optimizer)."""
        return None

    def adjust_step(self, lr: float, p: ParamPlan, options: Mapping[str, Any]) -> float:
        """``lr`` (a parametrization's factor) corrected for the optimizer's own shape-dependent step adjustment:
        times the adjustment at the base shape, over the one at the current shape (unchanged when it has none), so
        the adjustment's own width dependence is undone."""
        return lr

    def has_own_width_rule(self) -> bool:
        return type(self).width_lr is not OptimizerFamily.width_lr

    def width_lr(self, p: ParamPlan, plan: Plan, options: Mapping[str, Any]) -> float:
        """The learning-rate multiplier of ``p`` under the plan's parametrization (1 at base width)."""
        from .parametrizations import parametrization_of

        return parametrization_of(plan).width_lr(p, plan, self, options)

    def warnings(self, options: Mapping[str, Any]) -> list[str]:
        """Lint for this family with these optimizer options."""
        return []

    def __repr__(self) -> str:
        return f"<optimizer family {self.name!r} ({self.update.value}): {self.description}>"


class AdamFamily(OptimizerFamily):
    name, eps_key, update = "adam", "eps", UpdateRule.ADAPTIVE
    lr_range = (1e-5, 1.0)
    description = "entry-wise normalised updates (Adam, AdamW, RMSprop, Adagrad, NAdam, RAdam, Adamax)"


class SignFamily(OptimizerFamily):
    name, eps_key, update = "sign", None, UpdateRule.SIGN
    lr_range = (1e-6, 1e-1)
    description = "sign updates (Lion, signSGD): Adam's ε→0 limit, the same relative rule"

    def warnings(self, options):
        return ["sign-based optimizer (Lion-like): it follows Adam's μP rule (hidden lr ∝ 1/fan_in), but Lingle 2024 "
                "found learning-rate transfer fails with Lion under this rule. What to do: run the coordinate check "
                "and a short LR sweep at two widths before trusting the transfer, or use AdamW."]


class SGDFamily(OptimizerFamily):
    name, update = "sgd", UpdateRule.GRADIENT
    lr_range = (1e-4, 10.0)
    description = "updates proportional to the gradient (SGD with momentum/Nesterov, ASGD)"


class AdafactorFamily(OptimizerFamily):
    name, update = "adafactor", UpdateRule.RELATIVE
    lr_range = (1e-5, 1.0)
    description = "torch.optim.Adafactor: normalised updates times the parameter's RMS (relative step)"


def _muon_adjust(fn: str | None, shape: tuple[int, ...]) -> float:
    """torch.optim.Muon's per-matrix lr adjustment (torch/optim/_muon.py::_adjust_lr)."""
    a, b = shape[:2]
    if fn is None or fn == "original":
        return math.sqrt(max(1.0, a / b))
    if fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(a, b))
    return 1.0


class MuonFamily(OptimizerFamily):
    name, update = "muon", UpdateRule.ORTHOGONALIZED
    lr_range = (1e-4, 1.0)
    description = "orthogonalised matrix updates (torch.optim.Muon): hidden 2-D weights only"

    def accepts(self, p, plan):
        if p.role != "hidden":
            return f"{p.role} role (Muon is for hidden matrices; embeddings, readout and vectors use the fallback)"
        if len(p.shape) != 2:
            return f"{len(p.shape)}-D weight (torch's Muon takes matrices; conv kernels and expert stacks use the " \
                   "fallback)"
        return None

    def adjust_step(self, lr, p, options):
        fn = options.get("adjust_lr_fn")
        return lr * _muon_adjust(fn, p.base_shape) / _muon_adjust(fn, p.shape)

    def warnings(self, options):
        if options.get("adjust_lr_fn") == "match_rms_adamw":
            return ["Muon with adjust_lr_fn='match_rms_adamw' gives every matrix an update RMS independent of width "
                    "(0.2·√max(A, B)), which is not μP; muplify divides that factor out per matrix and applies the "
                    "spectral rule √(fan_out/fan_in) relative to base, so μP holds. What to do: nothing, or use the "
                    "default adjust_lr_fn (the tuned lr then means the same at every width either way)."]
        return []


FAMILIES: dict[str, OptimizerFamily] = {}
OPTIMIZER_FAMILIES: dict[type, str] = {}  # optimizer class -> family name


def register_family(family: OptimizerFamily, *classes: type) -> OptimizerFamily:
    """Register an optimizer family and the optimizer classes that follow it.  A name already taken by another
    family raises (pop it from ``FAMILIES`` first to replace it)."""
    if not isinstance(family, OptimizerFamily) or not family.name:
        raise OptimizerRuleError("register_family needs an OptimizerFamily instance with a name")
    if not isinstance(family.update, UpdateRule):
        raise OptimizerRuleError(f"family {family.name!r}: update must be a muplify.policy.UpdateRule, got "
                                 f"{family.update!r}")
    old = FAMILIES.get(family.name)
    if old is not None and old is not family:
        raise OptimizerRuleError(f"an optimizer family named {family.name!r} is already registered ({old!r}); "
                                 "choose another name, or remove the old one from muplify.policy.FAMILIES first")
    FAMILIES[family.name] = family
    for cls in classes:
        register_rule(cls, family.name)
    return family


def register_rule(cls: type, family: str) -> None:
    """Declare that optimizer class ``cls`` follows the rules of a registered family ('adam', 'sgd', 'sign', ...)."""
    if family not in FAMILIES:
        raise OptimizerRuleError(f"family must be one of {sorted(FAMILIES)}, got {family!r}")
    old = OPTIMIZER_FAMILIES.get(cls)
    if old is not None and old != family:
        raise OptimizerRuleError(f"{getattr(cls, '__name__', cls)} is already registered with family {old!r}; "
                                 f"remove it from muplify.policy.OPTIMIZER_FAMILIES first to move it to {family!r}")
    OPTIMIZER_FAMILIES[cls] = family


def family_for(cls: type, rule: str | None = None) -> OptimizerFamily:
    if rule is not None:
        if rule not in FAMILIES:
            raise OptimizerRuleError(f"rule must be one of {sorted(FAMILIES)} (e.g. 'adam' or 'sgd'), got {rule!r}")
        return FAMILIES[rule]
    for k in getattr(cls, "__mro__", ()):
        if k in OPTIMIZER_FAMILIES:
            return FAMILIES[OPTIMIZER_FAMILIES[k]]
    raise OptimizerRuleError(
        f"muplify has no μP rule for {getattr(cls, '__name__', cls)}. Pass rule='adam' if it normalises updates "
        "entry-wise (Adam-like), rule='sign' for sign updates (Lion), rule='sgd' if updates are proportional to the "
        "gradient, or call muplify.register_rule(YourOptimizer, 'adam') (muplify.register_family for a new rule). "
        "Known: " + ", ".join(sorted(c.__name__ for c in OPTIMIZER_FAMILIES)))


_o = __import__("torch").optim
register_family(AdamFamily(), _o.Adam, _o.AdamW, _o.RMSprop, _o.Adagrad, _o.NAdam, _o.RAdam, _o.Adamax,
                _o.SparseAdam)
register_family(SGDFamily(), _o.SGD, _o.ASGD)
register_family(SignFamily())
register_family(AdafactorFamily(), *([_o.Adafactor] if hasattr(_o, "Adafactor") else []))
register_family(MuonFamily(), *([_o.Muon] if hasattr(_o, "Muon") else []))
del _o
