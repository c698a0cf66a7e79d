"""The policy: the one place that turns a plan's facts into what muplify does, cut along its seams.

* :mod:`~muplify.policy.families` — optimizer families (optimizer mechanics only: what they take, their ε key, how
  an update scales with the gradient, their default learning-rate range);
* :mod:`~muplify.policy.parametrizations` — :class:`Parametrization` objects (``"mup"``, ``"sp"``,
  ``"spectral"``): init, lr / wd / ε factors per role × update rule, site multipliers, depth rule;
* :mod:`~muplify.policy.site_kinds` — kinds of multiplier sites (finder, ``hp`` key, factor rule);
* :mod:`~muplify.policy.derive` — role × family × parametrization × hp × depth → init / lr / wd / ε / multipliers;
* :mod:`~muplify.policy.describe` — ``print(plan)`` and the μP lint.

Sources: TP-V = Tensor Programs V (Yang et al. 2022), Tables 3 and 8; spectral μP = Yang, Simon & Bernstein 2023;
CompleteP = Dey et al. 2025; Lingle 2024 = "A large-scale exploration of μ-transfer".
"""
from __future__ import annotations

from .derive import ForwardMultiplier, ParamRules, derive, forward_multipliers, param_rules
from .describe import describe, lint
from .families import (FAMILIES, OPTIMIZER_FAMILIES, AdafactorFamily, AdamFamily, MuonFamily, OptimizerFamily,
                       SGDFamily, SignFamily, UpdateRule, family_for, register_family, register_rule)
from .parametrizations import (PARAMETRIZATIONS, MuP, Parametrization, Spectral, Standard, get_parametrization,
                               parametrization_of, register_parametrization, width_init_factor)
from .regime import REGIME_RULES, Regime, RegimeRule, register_regime_rule
from .site_kinds import SITE_KINDS, SiteKind, SiteUse, register_site_kind

__all__ = ["ParamRules", "ForwardMultiplier", "OptimizerFamily", "UpdateRule", "FAMILIES", "OPTIMIZER_FAMILIES",
           "register_family", "register_rule", "family_for", "derive", "forward_multipliers", "param_rules", "lint",
           "describe", "width_init_factor", "Parametrization", "PARAMETRIZATIONS", "register_parametrization",
           "get_parametrization", "Regime", "RegimeRule", "REGIME_RULES", "register_regime_rule", "SiteKind", "SiteUse", "SITE_KINDS", "register_site_kind"]


def _register() -> None:
    import sys

    from .. import options as _options

    _options.POLICY = sys.modules[__name__]


_register()
