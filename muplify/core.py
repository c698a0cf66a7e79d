"""``muplify(model, base_width)``: the one call.  Runs capture -> width analysis -> plan -> rewrite.

    >>> import torch
    >>> from muplify import muplify
    >>> from muplify.models import GPT
    >>> mu = muplify(GPT(d_model=256), base_width=128)
    >>> mu.plan["blocks.0.mlp.0.weight"].role, str(mu.plan["blocks.0.mlp.2.weight"].fan_in)
    ('hidden', '4*w')
    >>> opt = mu.optimizer(torch.optim.AdamW, lr=3e-3)
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn as nn

from . import rewrite
from .capture import capture
from .errors import MuplifyError, PlanError
from .optim import make_optimizer
from .plan import Plan, build_plan
from .width import analyse

__all__ = ["muplify", "analyze", "MuplifiedModule", "is_muplified"]


class MuplifiedModule:
    """Mixed into the model's own class by :func:`muplify` (as FSDP2's ``fully_shard`` does)."""

    _mup_orig_class: type

    @property
    def plan(self) -> Plan:
        return self.__dict__["_mup_plan"]

    def optimizer(self, optimizer_class: type, params=None, *, rule: str | None = None, **kwargs: Any):
        """An ordinary ``optimizer_class`` instance with μP param groups (see :mod:`muplify.optim`)."""
        return make_optimizer(self, self.plan, optimizer_class, params, rule=rule, **kwargs)

    def to_standard(self) -> nn.Module:
        """A plain copy of the model (original class, no hooks) computing the same function: every forward
        multiplier folded into the weights (readout multiplier into the readout, attention scale into the query
        projection).  A tied readout is untied only when a readout multiplier must be folded; the notes say so."""
        out = rewrite.strip_copy(self)
        notes = rewrite.fold_multipliers(out, self.plan)
        out.__dict__["mup_export_notes"] = notes
        return out

    def mup_init(self, init_fn: Callable[[nn.Module], None] | None = None, *, rule: str | None = None) -> None:
        """(Re-)initialise parameters: run the model's own init, then apply the μP init rescaling of the plan.

        ``init_fn(model)`` defaults to calling ``reset_parameters()`` on every submodule that has one, or HF's
        ``_init_weights`` when the model is a transformers PreTrainedModel.  The μP rescaling then follows the plan's
        init policy, re-detected from the fresh values (``rule=`` forces 'fan_in' or 'fixed').
        """
        from .initialization import detect_rule, init_scale

        with torch.no_grad():
            if init_fn is not None:
                init_fn(self)
            elif hasattr(self, "_init_weights") and hasattr(self, "config"):
                for m in self.modules():
                    self._init_weights(m)
                if hasattr(self, "tie_weights"):
                    self.tie_weights()
            else:
                for m in self.modules():
                    if hasattr(m, "reset_parameters") and m is not self:
                        m.reset_parameters()
        plan = self.plan
        named = dict(self.named_parameters())
        opt = plan.options.get("init", "auto")
        for n, p in plan.params.items():
            t = named.get(n)
            if t is None or t.is_meta:
                continue
            sym = plan.width_symbol
            fan_in = int(p.fan_in.subs(sym, plan.width)) if p.fan_in.has(sym) else int(p.fan_in)
            fan_out = int(p.fan_out.subs(sym, plan.width)) if p.fan_out.has(sym) else int(p.fan_out)
            if rule is not None or opt not in (None, "auto"):
                r = rule or opt
                r = r if p.role not in ("vector", "fixed") else "keep"
            else:
                r, _ = detect_rule(t, fan_in, (fan_out, max(1, t.numel() // max(1, t.shape[1] if t.dim() > 1 else 1))))
            zero = "zero (" in p.init_rule and "query" not in p.init_rule
            p.init_rule = r + (" -> zero (readout_zero_init)" if zero else "")
            p.init_scale = 0.0 if zero else init_scale(r, p.role, p.width_mult_in, p.width_mult_out)
            if "Table-3" in p.note and not zero:
                p.init_scale /= p.width_mult_in
        rewrite.apply_init(self, plan)


_CLASS_CACHE: dict[type, type] = {}


def _mu_class(cls: type) -> type:
    if cls not in _CLASS_CACHE:
        _CLASS_CACHE[cls] = type(f"Mu{cls.__name__}", (MuplifiedModule, cls), {"_mup_orig_class": cls,
                                                                                "__module__": cls.__module__})
    return _CLASS_CACHE[cls]


def is_muplified(model: nn.Module) -> bool:
    return isinstance(model, MuplifiedModule)


def _check_args(model, base_width, init, head_scaling, weight_decay) -> None:
    if not isinstance(model, nn.Module):
        raise MuplifyError(f"muplify() takes an nn.Module, got {type(model).__name__}")
    if is_muplified(model):
        raise MuplifyError("this model is already muplified; call muplify() once (use mu.plan to inspect it)")
    if not isinstance(base_width, int) or isinstance(base_width, bool) or base_width <= 0:
        raise MuplifyError(f"base_width must be a positive int (the width the hyperparameters were tuned at), "
                           f"got {base_width!r}")
    if init not in ("auto", "fan_in", "fan_out", "fixed", None):
        raise MuplifyError(f"init must be 'auto', 'fan_in', 'fan_out', 'fixed' or None, got {init!r}")
    if head_scaling not in ("heads", "head_dim"):
        raise MuplifyError(f"head_scaling must be 'heads' (head_dim fixed, heads grow) or 'head_dim', got "
                           f"{head_scaling!r}")
    if weight_decay not in ("coupled", "scaled"):
        raise MuplifyError(f"weight_decay must be 'coupled' or 'scaled', got {weight_decay!r}")
    if not any(True for _ in model.parameters()):
        raise MuplifyError(f"{type(model).__name__} has no parameters: there is nothing to parametrize")


def analyze(model: nn.Module, base_width: int, *, width: int | None = None, example_inputs=None,
            example_kwargs=None, head_scaling: str = "heads", init: str | None = "auto",
            weight_decay: str = "coupled", readout_zero_init: bool = False, query_zero_init: bool = False) -> Plan:
    """Stages 1-3 only: return the plan without touching the model."""
    _check_args(model, base_width, init, head_scaling, weight_decay)
    cap = capture(model, example_inputs, example_kwargs)
    wa = analyse(cap, width=width, head_scaling=head_scaling)
    plan = build_plan(wa, model, base_width, head_scaling=head_scaling, init=init, weight_decay=weight_decay,
                      readout_zero_init=readout_zero_init, query_zero_init=query_zero_init)
    plan.options["capture_seconds"] = round(cap.seconds, 3)
    return plan


def muplify(model: nn.Module, base_width: int | None = None, *, width: int | None = None, example_inputs=None,
            example_kwargs=None, head_scaling: str = "heads", init: str | None = "auto",
            weight_decay: str = "coupled", readout_zero_init: bool = False, query_zero_init: bool = False,
            overrides: dict[str, dict] | None = None, plan: Plan | str | None = None) -> nn.Module:
    """Give ``model`` the Maximal Update Parametrization relative to ``base_width``, in place.

    Returns the same object, its class swapped to a subclass with :class:`MuplifiedModule` mixed in (``.plan``,
    ``.optimizer()``, ``.to_standard()``, ``.mup_init()``).  On any error the model is left untouched.

    ``plan=`` (a :class:`Plan` or a path to a plan JSON file) re-applies a saved plan without re-deriving it; it
    must match the model exactly.  ``overrides={"glob": {"role": "hidden"}}`` edits the plan before the rewrite.
    """
    if plan is not None:
        if isinstance(plan, str):
            plan = Plan.from_json(plan)
        if base_width is not None and base_width != plan.base_width:
            raise PlanError(f"base_width={base_width} disagrees with the plan's base_width={plan.base_width}")
        _check_args(model, plan.base_width, plan.options.get("init"), plan.options.get("head_scaling", "heads"),
                    plan.options.get("weight_decay", "coupled"))
        rewrite.validate_plan(model, plan)
        plan = plan.copy()
        apply_init = False  # a saved plan records an init that already happened; load the checkpoint next
    else:
        if base_width is None:
            raise MuplifyError("muplify() needs base_width= (or plan=)")
        plan = analyze(model, base_width, width=width, example_inputs=example_inputs, example_kwargs=example_kwargs,
                       head_scaling=head_scaling, init=init, weight_decay=weight_decay,
                       readout_zero_init=readout_zero_init, query_zero_init=query_zero_init)
        apply_init = True
    for pattern, fields in (overrides or {}).items():
        plan.override(pattern, **fields)
    # everything that can fail has run; from here on the model is modified
    rewrite.apply_plan(model, plan, init=apply_init)
    model.__class__ = _mu_class(type(model))
    model.__dict__["_mup_plan"] = plan
    return model
