"""Stage 6: μP-matched optimizers.

``make_optimizer`` returns an ordinary instance of the requested class.  Its param groups are split by equal μP
multipliers (a handful, not one per parameter) and carry ``lr_mult`` / ``wd_mult`` / ``eps_mult``; ``group["lr"]``
holds the *schedule's* learning rate, and a step pre-hook multiplies it by ``lr_mult`` for the duration of ``step()``
only.  So every ``torch.optim.lr_scheduler`` — including ones that write absolute values such as
``OneCycleLR(max_lr=...)`` or ``CyclicLR`` — keeps the μP ratios, and a Tensor ``lr`` stays a Tensor so that
``torch.compile(opt.step)`` does not recompile when the schedule moves.

The multipliers come from :mod:`muplify.policy` (the optimizer's registered family).  An optimizer that takes only
some parameters (Muon: hidden matrices) is combined with a ``fallback`` optimizer into one
:class:`CombinedOptimizer`, which is a ``torch.optim.Optimizer`` over every trainable parameter.
"""
from __future__ import annotations

import warnings
import weakref
from collections import OrderedDict
from typing import Any, Iterable

import torch
import torch.nn as nn

from .errors import OptimizerRuleError
from .optim_args import check_optimizer_class
from .plan import Plan
from .policy import FAMILIES, OPTIMIZER_FAMILIES, OptimizerFamily, family_for, param_rules, register_family, \
    register_rule
from .policy.regime import make_regime, regime_rule

__all__ = ["make_optimizer", "register_rule", "register_family", "resolve_optimizer", "CombinedOptimizer",
           "OPTIMIZER_FAMILIES", "FAMILIES", "watch_plain_optimizers"]

_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def resolve_optimizer(optimizer: Any) -> type:
    """An optimizer class from a class or a name in ``torch.optim`` (case-insensitive: "adamw", "AdamW")."""
    if not isinstance(optimizer, str):
        check_optimizer_class(optimizer)  # a module class, an optimizer instance...: a sentence, not a repr
        return optimizer
    if isinstance(optimizer, str):
        names = {k.lower(): getattr(torch.optim, k) for k in dir(torch.optim)
                 if isinstance(getattr(torch.optim, k), type) and issubclass(getattr(torch.optim, k),
                                                                              torch.optim.Optimizer)}
        cls = names.get(optimizer.lower())
        if cls is None:
            raise OptimizerRuleError(f"unknown optimizer name {optimizer!r}: torch.optim has "
                                     f"{', '.join(sorted(c.__name__ for c in names.values()))}; or pass the class")
        return cls


def _strip(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _WRAPPER_PREFIXES:
            if name.startswith(p):
                name, changed = name[len(p):], True
        name = name.replace("._orig_mod.", ".").replace("._checkpoint_wrapped_module.", ".")
    return name


def _lookup(plan: Plan, names: dict[int, str]):
    def entry(p: torch.Tensor):
        name = names.get(id(p))
        if name is None:
            raise OptimizerRuleError("a parameter given to the optimizer is not a parameter of the muplified model")
        try:
            return plan[_strip(name)]
        except KeyError:
            raise OptimizerRuleError(f"parameter '{name}' is not in the μP plan; was it added after muplify()?")
    return entry


_SCALED_KEYS = (("lr", "lr_mult"), ("weight_decay", "wd_mult"))


def _mup_step_pre_hook(opt: torch.optim.Optimizer, args, kwargs) -> None:
    for g in opt.param_groups:
        saved = g.pop("_mup_saved", None)
        if saved:  # a previous step raised before the post-hook ran: restore first
            g.update(saved)
        saved = {}
        for key, mult in (*_SCALED_KEYS, (g.get("_mup_eps_key"), "eps_mult")):
            m = g.get(mult, 1.0)
            if key is None or m == 1.0 or key not in g or g[key] is None:
                continue
            saved[key] = g[key]
            g[key] = g[key] * m
        if saved:
            g["_mup_saved"] = saved


def _mup_step_post_hook(opt: torch.optim.Optimizer, args, kwargs) -> None:
    for g in opt.param_groups:
        saved = g.pop("_mup_saved", None)
        if saved:
            g.update(saved)


def _groups(model: nn.Module, plan: Plan, family: OptimizerFamily, user_groups: list[dict], defaults: dict,
            accept, regime: tuple | None = None) -> tuple[list[dict], list[dict]]:
    """Split each user group by equal (lr, wd, ε) multipliers; returns (groups for ``family``, rejected groups).
    ``regime=(rule, Regime, cls)``: the batch-size/duration rule's factors multiply the multipliers and its new
    averaging coefficients are written into the group (muplify.policy.regime)."""
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    entry = _lookup(plan, names)
    rules = plan.rules()
    mine, rejected = [], []
    for ug in user_groups:
        ps = ug["params"]
        ps = [ps] if isinstance(ps, torch.Tensor) else list(ps)
        split: "OrderedDict[tuple, list]" = OrderedDict()
        roles: dict[tuple, set] = {}
        left = []
        for p in ps:
            e = entry(p)
            if accept and family.accepts(e, plan) is not None:
                left.append(p)
                continue
            opts = {**defaults, **{k: v for k, v in ug.items() if k != "params"}}
            key = param_rules(plan, e, family, opts, rules[e.name].absorbed)
            split.setdefault(key, []).append(p)
            roles.setdefault(key, set()).add(e.role)
        for (lm, wm, em), members in split.items():
            g = {k: v for k, v in ug.items() if k != "params"}
            if isinstance(g.get("lr", defaults.get("lr")), torch.Tensor):
                g["lr"] = g.get("lr", defaults.get("lr")).clone()
            g.update(params=members, lr_mult=lm, wd_mult=wm, mup_roles=",".join(sorted(roles[(lm, wm, em)])),
                     mup_family=family.name)
            if regime is not None:
                em = _apply_regime(plan, g, defaults, family, regime, lm, wm, em)
            if family.eps_key is not None:
                g.update(eps_mult=em, _mup_eps_key=family.eps_key)
            mine.append(g)
        if left:
            rejected.append({**{k: v for k, v in ug.items() if k != "params"}, "params": left})
    return mine, rejected


def _apply_regime(plan: Plan, g: dict, defaults: dict, family: OptimizerFamily, regime: tuple, lm: float, wm: float,
                  em: float) -> float:
    """Compose the regime rule's factors into group ``g`` (in place); returns the new ε multiplier."""
    rule, reg, cls = regime
    opts = {**_class_defaults(cls), **defaults, **g}
    f = rule.factors(cls, opts, reg, family.eps_key)
    g.update(f.values)
    g.update(lr_mult=lm * f.lr, wd_mult=wm * f.wd)
    g["mup_regime"] = f"{reg}: {f.describe(opts)} ({family.name}: {rule.source})"
    for w in f.notes:
        text = f"regime rule ({family.name}): {w}"
        if text not in plan.lint:
            plan.lint.append(text)
            warnings.warn(f"muplify: {text}", UserWarning, stacklevel=5)
    note = f"optimizer {cls.__name__} at {reg}: {f.describe(opts)}"
    if note not in plan.notes:
        plan.notes.append(note)
    return em * f.eps


def _class_defaults(cls: type) -> dict:
    """The optimizer's own defaults (betas=(0.9, 0.999) when the user passes none: the rule scales them too)."""
    import inspect

    try:
        ps = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in ps if p.default is not inspect.Parameter.empty and p.name != "params"}


def _regime(plan: Plan, family: OptimizerFamily, cls: type, batch_size, steps) -> tuple | None:
    """(rule, Regime, cls) when batch_size= or steps= asks for the regime rules; raises before anything is built."""
    if batch_size is None and steps is None:
        return None
    o = plan.options
    reg = make_regime(batch_size, steps, getattr(o, "base_batch_size", None), getattr(o, "base_steps", None))
    return regime_rule(family, cls), reg, cls


def make_optimizer(model: nn.Module, plan: Plan, optimizer_class: Any, params: Iterable | None = None, *,
                   rule: str | None = None, fallback: tuple | None = None, batch_size: int | None = None,
                   steps: int | None = None, **kwargs: Any) -> torch.optim.Optimizer:
    """Build ``optimizer_class`` over ``params`` (default: the model's trainable parameters) with μP groups.

    ``optimizer_class``: a class or its name in ``torch.optim``.  ``params`` may be tensors or dicts (user param
    groups, e.g. no weight decay for norms); each user group is split by equal multipliers and keeps its options.
    ``rule=`` names the family of an optimizer muplify does not know ('adam', 'sgd', 'sign', ...).
    ``fallback=(cls, kwargs)``: the optimizer for the parameters ``optimizer_class`` does not take (Muon: everything
    but hidden matrices); the result is then one :class:`CombinedOptimizer`.
    ``batch_size=`` / ``steps=``: the target run's regime, relative to the plan's ``base_batch_size`` /
    ``base_steps``: the family's batch-size and duration rules (:mod:`muplify.policy.regime`) scale lr, ε, weight
    decay and the averaging coefficients; a family without a rule refuses.
    """
    cls = resolve_optimizer(optimizer_class)
    family = family_for(cls, rule)
    regime = _regime(plan, family, cls, batch_size, steps)
    if params is None:
        user_groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    else:
        params = list(params)
        user_groups = params if params and isinstance(params[0], dict) else [{"params": params}]
    # with a regime, the fallback's family must have a rule too: checked before anything is built
    fb = _fallback(fallback) if fallback is not None and regime is not None else None
    fb_regime = None if fb is None else _regime(plan, family_for(fb[0]), fb[0], batch_size, steps)
    if regime is not None:  # a bad averaging coefficient raises here, before the plan records anything
        for ug in user_groups:
            regime[0].factors(cls, {**_class_defaults(cls), **kwargs, **{k: v for k, v in ug.items() if k != "params"}}, regime[1],
                              family.eps_key)
    groups, rest = _groups(model, plan, family, user_groups, kwargs, accept=True, regime=regime)
    _lint_family(plan, family, kwargs)
    if rest:
        if fallback is None:
            names = {id(p): n for n, p in model.named_parameters()}
            some = [names.get(id(p), "?") for g in rest for p in g["params"]][:4]
            raise OptimizerRuleError(
                f"{cls.__name__} does not take {sum(len(g['params']) for g in rest)} of the parameters (e.g. {some}: "
                f"{family.accepts(plan[_strip(some[0])], plan) if some and some[0] != '?' else ''}). Pass "
                f"fallback=(torch.optim.AdamW, {{'lr': ...}}) for them, or params= with only the ones it takes.")
        fb_cls, fb_kwargs = fb or _fallback(fallback)
        fb_family = family_for(fb_cls)
        fb_groups, fb_rest = _groups(model, plan, fb_family, rest, fb_kwargs, accept=True, regime=fb_regime)
        if fb_rest:
            raise OptimizerRuleError(f"the fallback {fb_cls.__name__} does not take every remaining parameter either")
        _lint_family(plan, fb_family, fb_kwargs)
        opt = CombinedOptimizer([cls(groups, **kwargs), fb_cls(fb_groups, **fb_kwargs)]) if groups else \
            fb_cls(fb_groups, **fb_kwargs)
    else:
        opt = cls(groups, **kwargs)
    opt.register_step_pre_hook(_mup_step_pre_hook)
    opt.register_step_post_hook(_mup_step_post_hook)
    return opt


def _fallback(fallback) -> tuple[type, dict]:
    if isinstance(fallback, (tuple, list)) and len(fallback) == 2 and isinstance(fallback[1], dict):
        return resolve_optimizer(fallback[0]), dict(fallback[1])
    if isinstance(fallback, (type, str)):
        return resolve_optimizer(fallback), {}
    raise OptimizerRuleError(f"fallback must be (optimizer_class, kwargs), e.g. (torch.optim.AdamW, {{'lr': 3e-4}}); "
                             f"got {fallback!r}")


def _lint_family(plan: Plan, family: OptimizerFamily, options: dict) -> None:
    for w in family.warnings(options):
        if w not in plan.lint:
            plan.lint.append(w)
            warnings.warn(f"muplify: {w}", UserWarning, stacklevel=4)


class CombinedOptimizer(torch.optim.Optimizer):
    """Several optimizers over disjoint parameters, as one ``torch.optim.Optimizer``.

    ``param_groups`` is the concatenation of the inner optimizers' groups (the same dict objects) and ``state`` is
    shared, so LR schedulers, ``zero_grad``, ``state_dict()`` / ``load_state_dict()``, step hooks and
    ``torch.compile`` see one ordinary optimizer.  ``step()`` steps each inner optimizer once (closure evaluated
    once)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = list(optimizers)
        super().__init__([g for o in self.optimizers for g in o.param_groups], defaults={})
        self._share()

    def _share(self) -> None:
        i = 0
        for o in self.optimizers:
            n = len(o.param_groups)
            o.param_groups = self.param_groups[i:i + n]
            o.state = self.state
            i += n

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for o in self.optimizers:
            o.step()
        return loss

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        self._share()

    def add_param_group(self, param_group: dict) -> None:
        if getattr(self, "optimizers", None) and len(self.param_groups) >= sum(
                len(o.param_groups) for o in self.optimizers):
            raise OptimizerRuleError("add parameters to a CombinedOptimizer through its inner optimizers "
                                     "(opt.optimizers[i].add_param_group) so that each knows its parameters")
        super().add_param_group(param_group)

    def __repr__(self) -> str:
        return "CombinedOptimizer(" + ", ".join(type(o).__name__ for o in self.optimizers) + ")"


# ------------------------------------------------------------------------------------------------ lint at step()
_MUPLIFIED: "weakref.WeakValueDictionary[int, torch.Tensor]" = weakref.WeakValueDictionary()
_WARNED: set[int] = set()
_HOOK = None


def watch_plain_optimizers(model: nn.Module) -> None:
    """Warn once, at the first ``step()`` of an optimizer without μP groups that steps ``model``'s parameters (a
    plain ``torch.optim.AdamW(mu.parameters())`` silently trains the muplified model with SP learning rates)."""
    global _HOOK
    for p in model.parameters():
        _MUPLIFIED[id(p)] = p
    if _HOOK is None:
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        _HOOK = register_optimizer_step_pre_hook(_check_plain)


def _check_plain(opt: torch.optim.Optimizer, args, kwargs) -> None:
    if torch.compiler.is_compiling() or id(opt) in _WARNED or isinstance(opt, CombinedOptimizer):
        return
    _WARNED.add(id(opt))
    weakref.finalize(opt, _WARNED.discard, id(opt))
    if any("lr_mult" in g for g in opt.param_groups):
        return
    hits = sum(1 for g in opt.param_groups for p in g["params"] if _MUPLIFIED.get(id(p)) is p)
    if hits:
        warnings.warn(f"muplify: {type(opt).__name__} is stepping {hits} parameters of a muplified model without μP "
                      "param groups, so it trains them with standard-parametrization learning rates. What to do: "
                      "build it with mu.optimizer(torch.optim.X, lr=...) (or muplify.optim.make_optimizer for a "
                      "wrapped model).", UserWarning, stacklevel=3)
