"""Stage 5: μP-matched optimizers.

``make_optimizer`` returns an ordinary instance of the requested class.  Its param groups are split by equal μP
multipliers (a handful, not one per parameter) and carry ``lr_mult`` / ``wd_mult``; ``group["lr"]`` holds the
*schedule's* learning rate, and a step pre-hook multiplies it by ``lr_mult`` for the duration of ``step()`` only.
So every ``torch.optim.lr_scheduler`` — including ones that write absolute values such as
``OneCycleLR(max_lr=...)`` or ``CyclicLR`` — keeps the μP ratios, and a Tensor ``lr`` stays a Tensor so that
``torch.compile(opt.step)`` does not recompile when the schedule moves.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterable

import torch
import torch.nn as nn

from .errors import OptimizerRuleError
from .plan import Plan

__all__ = ["make_optimizer", "register_rule", "rule_for", "OPTIMIZER_RULES"]

OPTIMIZER_RULES: dict[type, str] = {
    torch.optim.Adam: "adam", torch.optim.AdamW: "adam", torch.optim.RMSprop: "adam", torch.optim.Adagrad: "adam",
    torch.optim.NAdam: "adam", torch.optim.RAdam: "adam", torch.optim.Adamax: "adam", torch.optim.SparseAdam: "adam",
    torch.optim.SGD: "sgd", torch.optim.ASGD: "sgd",
}
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def register_rule(cls: type, family: str) -> None:
    """Declare that optimizer class ``cls`` follows the 'adam' (entry-wise normalised) or 'sgd' μP rule."""
    if family not in ("adam", "sgd"):
        raise OptimizerRuleError(f"family must be 'adam' or 'sgd', got {family!r}")
    OPTIMIZER_RULES[cls] = family


def rule_for(cls: type, rule: str | None = None) -> str:
    if rule is not None:
        if rule not in ("adam", "sgd"):
            raise OptimizerRuleError(f"rule must be 'adam' or 'sgd', got {rule!r}")
        return rule
    for k in getattr(cls, "__mro__", ()):
        if k in OPTIMIZER_RULES:
            return OPTIMIZER_RULES[k]
    raise OptimizerRuleError(
        f"muplify has no μP rule for {getattr(cls, '__name__', cls)}. Pass rule='adam' if it normalises updates "
        "entry-wise (Adam, Lion, Adafactor-like), rule='sgd' if updates are proportional to the gradient, or call "
        "muplify.optim.register_rule(YourOptimizer, 'adam'). Known: "
        + ", ".join(sorted(c.__name__ for c in OPTIMIZER_RULES)))


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


def _mup_step_pre_hook(opt: torch.optim.Optimizer, args, kwargs) -> None:
    for g in opt.param_groups:
        if "_mup_lr" in g:  # a previous step raised before the post-hook ran: restore first
            g["lr"], g["weight_decay"] = g.pop("_mup_lr"), g.pop("_mup_wd", g.get("weight_decay"))
        lm, wm = g.get("lr_mult", 1.0), g.get("wd_mult", 1.0)
        if lm == 1.0 and wm == 1.0:
            continue
        g["_mup_lr"] = g["lr"]
        g["lr"] = g["lr"] * lm
        if "weight_decay" in g:
            g["_mup_wd"] = g["weight_decay"]
            g["weight_decay"] = g["weight_decay"] * wm


def _mup_step_post_hook(opt: torch.optim.Optimizer, args, kwargs) -> None:
    for g in opt.param_groups:
        if "_mup_lr" in g:
            g["lr"] = g.pop("_mup_lr")
        if "_mup_wd" in g:
            g["weight_decay"] = g.pop("_mup_wd")


def make_optimizer(model: nn.Module, plan: Plan, optimizer_class: type, params: Iterable | None = None, *,
                   rule: str | None = None, **kwargs: Any) -> torch.optim.Optimizer:
    """Build ``optimizer_class`` over ``params`` (default: the model's trainable parameters) with μP groups.

    ``params`` may be tensors or dicts (user param groups, e.g. no weight decay for norms); each user group is split
    by equal (lr_mult, wd_mult) and keeps its own options.
    """
    family = rule_for(optimizer_class, rule)
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    entry = _lookup(plan, names)
    if params is None:
        user_groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    else:
        params = list(params)
        user_groups = params if params and isinstance(params[0], dict) else [{"params": params}]
    groups = []
    for ug in user_groups:
        ps = ug["params"]
        ps = [ps] if isinstance(ps, torch.Tensor) else list(ps)
        split: "OrderedDict[tuple[float, float], list]" = OrderedDict()
        roles: dict[tuple[float, float], set] = {}
        for p in ps:
            e = entry(p)
            key = (e.lr_mult[family], e.wd_mult[family])
            split.setdefault(key, []).append(p)
            roles.setdefault(key, set()).add(e.role)
        for (lm, wm), members in split.items():
            g = {k: v for k, v in ug.items() if k != "params"}
            if isinstance(g.get("lr", kwargs.get("lr")), torch.Tensor):
                g["lr"] = g.get("lr", kwargs.get("lr")).clone()
            g.update(params=members, lr_mult=lm, wd_mult=wm, mup_roles=",".join(sorted(roles[(lm, wm)])))
            groups.append(g)
    opt = optimizer_class(groups, **kwargs)
    opt.register_step_pre_hook(_mup_step_pre_hook)
    opt.register_step_post_hook(_mup_step_post_hook)
    return opt
