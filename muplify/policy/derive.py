"""The derivation: role × optimizer family × parametrization × ``hp`` × depth → init factor, learning-rate /
weight-decay / ε multipliers and forward multipliers.  Every rule is relative to the base model, so every
multiplier is exactly 1 at ``width == base_width`` (and ``depth == base_depth``); the ``hp`` constants then act
exactly as if written into the model by hand."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import PlanError
from ..plan import FoldTarget, ParamPlan, Plan
from .families import FAMILIES, OptimizerFamily
from .parametrizations import parametrization_of
from .site_kinds import SITE_KINDS

__all__ = ["ParamRules", "ForwardMultiplier", "derive", "forward_multipliers", "param_rules", "check_hp_keys"]


@dataclass(frozen=True)
class ParamRules:
    """What the parametrization does to one parameter."""

    init_scale: float  # factor on the current values (0.0: zero-init)
    lr_mult: Mapping[str, float]  # per family name: factor on the learning rate
    wd_mult: Mapping[str, float]  # per family name: factor on the weight decay
    eps_mult: Mapping[str, float]  # per family name: factor on ε (1 where the family has none)
    zero_channels: tuple[int, int, int] | None = None  # (axis, start, stop) zeroed by query_zero_init
    absorbed: float = 1.0  # a forward multiplier applied as parameter scaling (no module boundary carries it)


@dataclass(frozen=True)
class ForwardMultiplier:
    """A constant the rewrite applies at a site (a module hook)."""

    module: str
    where: str  # "input" | "output"
    factor: float
    reason: str  # "readout" | "router" | "attention" | "embedding" | "branch" | a registered site kind's
    param: str  # the parameter the multiplier belongs to
    channels: tuple[int, int, int] | None = None
    fold: tuple[FoldTarget, ...] = ()  # where export folds it


def _site_multipliers(plan: Plan):
    """(kind, use, factor) for every active site multiplier, in kind registration order."""
    param = parametrization_of(plan)
    for kind in SITE_KINDS.values():
        for use in kind.uses(plan):
            f = param.site_factor(kind, plan, use)
            if f is not None:
                yield kind, use, f


def forward_multipliers(plan: Plan) -> list[ForwardMultiplier]:
    """The forward multipliers (module hooks) at this width and depth, with these hp (active ones only: a multiplier
    whose rule is identically 1 in this configuration is not listed; none under a parametrization without hooks)."""
    out: list[ForwardMultiplier] = []
    seen: set = set()
    hooks = parametrization_of(plan).hooks
    for kind, use, factor in _site_multipliers(plan):  # validates sites even without hooks
        if not hooks:
            continue
        s, reason = use.site, kind.reason(use)
        key = (s.module, s.where, s.channels, reason)
        if key not in seen:  # a tied readout used twice gets one multiplier
            seen.add(key)
            out.append(ForwardMultiplier(s.module, s.where, float(factor), reason, s.param, s.channels, s.fold))
    return out


def _absorbed(plan: Plan) -> dict[str, float]:
    """Multipliers applied as parameter scaling: those no site carries (TP-V Table 3 form), and under a
    parametrization without hooks every site multiplier too."""
    param = parametrization_of(plan)
    out: dict[str, float] = {}
    for kind in SITE_KINDS.values():
        for n, c in kind.unsited(plan, param.widths).items():
            out[n] = out.get(n, 1.0) * c
    out = {n: c for n, c in out.items() if c != 1.0}
    if not param.hooks:
        seen: set = set()
        for kind, use, factor in _site_multipliers(plan):
            s = use.site
            key = (s.module, s.where, s.channels, kind.reason(use)) if s is not None else id(use)
            if key in seen:
                continue
            seen.add(key)
            for n, c in param.absorb_site(kind, plan, use, factor).items():
                out[n] = out.get(n, 1.0) * c
    return out


def param_rules(plan: Plan, p: ParamPlan, family: OptimizerFamily, options: Mapping[str, Any] | None = None,
                absorbed: float = 1.0) -> tuple[float, float, float]:
    """(lr multiplier, weight-decay multiplier, ε multiplier) of ``p`` under ``family`` with these optimizer
    options."""
    options = options or {}
    if p.role == "fixed" and p.decided_by == "dtype":
        return 1.0, 1.0, 1.0
    param = parametrization_of(plan)
    structural = (param.width_lr(p, plan, family, options) * param.depth_lr(p, plan, family)
                  * absorbed ** family.absorb_power)
    lr = structural * plan.hp.param_lr(p) * p.user_lr_mult  # module key > module kind > role
    # coupled: lr·wd per step as at base (the `mup` package's AdamW: hidden wd × m_in); the parameter form of a
    # multiplier divides wd by c^power either way, which keeps the by-hand equivalence exact
    wd = 1.0 / structural if plan.options.weight_decay == "coupled" else 1.0 / absorbed ** family.absorb_power
    eps = 1.0
    if family.eps_key is not None:
        eps = param.eps_factor(p, plan) / absorbed
    return lr, wd, eps


def derive(plan: Plan) -> dict[str, ParamRules]:
    """Per parameter, the rules for every registered family (raises PlanError when a needed site is missing or the
    parametrization cannot express a multiplier)."""
    check_hp_keys(plan)
    forward_multipliers(plan)  # validates sites (e.g. attn_mult without a query site)
    absorbed = _absorbed(plan)
    zero = _zero_channels(plan)
    readouts = {n for n, p in plan.params.items() if p.readout}
    out: dict[str, ParamRules] = {}
    memo: dict[tuple, ParamRules] = {}  # the blocks of a deep stack share their facts: derived once per fact key
    for n, p in plan.params.items():
        c = absorbed.get(n, 1.0)
        key = _fact_key(plan, p, c, zero.get(n), readouts)
        rules = memo.get(key)
        if rules is None:
            lrs, wds, epss = {}, {}, {}
            for fam in FAMILIES.values():
                if fam.accepts(p, plan) is None:  # e.g. Muon: hidden matrices only
                    lrs[fam.name], wds[fam.name], epss[fam.name] = param_rules(plan, p, fam, {}, c)
            rules = memo[key] = ParamRules(_init_scale(plan, p, c, readouts), lrs, wds, epss, zero.get(n), c)
        out[n] = rules
    return out


def check_hp_keys(plan: Plan) -> None:
    """PlanError for an ``init_mult`` / ``lr_mult`` key that is neither a role nor a module kind nor a module key of
    this plan, listing the valid ones."""
    from ..module_kinds import kinds_present, module_keys_present
    from ..options import GAIN, ROLES

    extra = plan.hp.per_module_keys()
    if not extra:
        return
    kinds, keys = kinds_present(plan), module_keys_present(plan)
    valid = set(kinds) | set(keys)
    for what, d in (("init_mult", plan.hp.init_mult), ("lr_mult", plan.hp.lr_mult)):
        bad = [k for k in d if k not in ROLES + (GAIN,) and k not in valid]
        if bad:
            raise PlanError(f"hp[{what!r}] has unknown roles, module kinds or module keys {bad}; valid keys: roles "
                            f"{list(ROLES + (GAIN,))}, module kinds in this model {kinds}, module keys in this model "
                            f"{keys} (see print(plan): 'module kinds')")


def _fact_key(plan: Plan, p: ParamPlan, absorbed: float, zero, readouts: set[str]) -> tuple:
    """Every fact of ``p`` that a rule above reads (two parameters with equal keys get equal rules: the blocks of a
    stack are derived once).  A rule that reads another fact of the parameter (its name included) adds it here."""
    owner = plan.params.get(p.bias_of) if p.bias_of else None
    return (p.role, p.decided_by, p.fan_in, p.fan_out, p.base_fan_in, p.base_fan_out, p.shape, p.base_shape, p.gain,
            p.in_branch, p.readout, p.init_rule, p.user_lr_mult, p.user_init_mult, len(p.aliases), p.name in readouts,
            p.module_kind, p.module_key,  # per-module hp (module key > kind > role)
            p.bias_of is not None and p.bias_of in readouts,
            None if owner is None else (owner.fan_in, owner.base_fan_in, len(owner.aliases)), absorbed, zero)


def _init_scale(plan: Plan, p: ParamPlan, absorbed: float, readouts: set[str]) -> float:
    if p.decided_by == "dtype":
        return 1.0
    o = plan.options
    if o.readout_zero_init and (p.name in readouts or p.bias_of in readouts):
        owner = plan.params[p.bias_of] if p.bias_of in readouts else p
        if len(owner.aliases) == 1:  # a readout tied to the embedding keeps its values (the embedding needs them)
            return 0.0
    width = parametrization_of(plan).init_factor(p, plan)
    # the depth rule for init is the branch multiplier itself (CompleteP keeps per-layer init)
    return width * absorbed * plan.hp.param_init(p) * p.user_init_mult


def _zero_channels(plan: Plan) -> dict[str, tuple[int, int, int]]:
    if not plan.options.query_zero_init:
        return {}
    out: dict[str, tuple[int, int, int]] = {}
    for a in plan.attention:
        if a.query is None:
            continue
        for f in a.query.fold:
            p = plan.params.get(f.param)
            if p is None:
                continue
            if f.axis is None:
                out[f.param] = (0, 0, p.shape[0]) if p.shape else (0, 0, 0)
            else:
                out[f.param] = (f.axis, f.start, f.stop)
    return out
