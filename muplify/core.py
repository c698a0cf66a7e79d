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

import contextlib
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

    def __reduce_ex__(self, protocol):
        # pickle (torch.save(mu)) as the original class, re-swapped on load: the Mu<Class> is made at run time
        cls = type(self)
        self.__class__ = cls._mup_orig_class
        try:
            rv = self.__reduce_ex__(protocol)
        finally:
            self.__class__ = cls
        return (_remake_muplified, (rv[0], rv[1]), *rv[2:])

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

        ``init_fn(model)`` defaults to the model's own init replayed in the order its constructor runs it, so that
        with the same RNG seed a model built on the meta device and ``to_empty()``-ed gets exactly the values of a
        model built directly on the CPU: ``reset_parameters()`` (or ``torch.nn``'s ``_reset_parameters()``) on every
        submodule, children before parents, and for transformers models ``init_weights()`` at the end of every
        PreTrainedModel (its ``post_init``; HF's "already initialised" flags are cleared first).  Tied weights draw
        as separate tensors and are tied again afterwards, the first registered owner keeping its values (as
        ``lm_head.weight = wte.weight`` does); ties that ``to_empty()`` broke are restored.  Buffers computed in
        ``__init__`` (rotary tables, masks) are not recomputed by ``reset_parameters``: pass an ``init_fn`` that does
        it, or load them (HF models re-create rotary buffers in ``_init_weights``).  With FSDP2 (DTensor parameters)
        the rule detection uses global statistics.  The μP rescaling then follows the plan's init policy,
        re-detected from the fresh values (``rule=`` forces 'fan_in' or 'fixed').
        """
        from .initialization import decide

        retie(self, self.plan)
        with torch.no_grad():
            if init_fn is not None:
                init_fn(self)
            else:
                _construction_init(self, self.plan)
        plan = self.plan
        named = dict(self.named_parameters())
        policy = rule or plan.options.get("init", "auto")
        for n, p in plan.params.items():
            t = named.get(n)
            if t is None or t.is_meta:
                continue
            p.init_rule, p.init_scale = decide(p, t, plan, policy)
            if p.init_extra == 0.0:
                p.init_rule += " -> zero (readout_zero_init)"
        rewrite.apply_init(self, plan)

    def to_empty(self, *, device, recurse: bool = True):
        """``nn.Module.to_empty``, then restore the weight ties of the plan (a meta -> device move unties them)."""
        out = super().to_empty(device=device, recurse=recurse)
        retie(self, self.plan)
        return out


def retie(model: nn.Module, plan: Plan) -> list[str]:
    """Make every alias of a tied parameter in ``plan`` the same Parameter object again (``Module.to_empty`` and
    ``.to()`` from the meta device create one new Parameter per module).  Returns the aliases re-tied."""
    named = dict(model.named_parameters(remove_duplicate=False))
    fixed = []
    for name, p in plan.params.items():
        canon = named.get(name)
        if canon is None or len(p.aliases) < 2:
            continue
        for alias in p.aliases:
            if alias != name and alias in named and named[alias] is not canon:
                mod_name, _, leaf = alias.rpartition(".")
                model.get_submodule(mod_name)._parameters[leaf] = canon
                fixed.append(alias)
    return fixed


@contextlib.contextmanager
def _untied(model: nn.Module, plan: Plan):
    """Give every alias of a tied parameter a temporary Parameter of its own, as during construction (before
    ``lm_head.weight = wte.weight``), so that each module's init draws what it draws at construction; then tie
    again: the plan's canonical name (the first registered owner) keeps its values."""
    named = dict(model.named_parameters(remove_duplicate=False))
    for name, p in plan.params.items():
        canon = named.get(name)
        for alias in p.aliases:
            if canon is not None and alias != name and named.get(alias) is canon:
                mod_name, _, leaf = alias.rpartition(".")
                model.get_submodule(mod_name)._parameters[leaf] = nn.Parameter(
                    torch.empty_like(canon), requires_grad=canon.requires_grad)
    try:
        yield
    finally:
        retie(model, plan)


def _reset_fn(m: nn.Module):
    fn = getattr(m, "reset_parameters", None)
    if not callable(fn) and type(m).__module__.startswith("torch.nn."):
        fn = getattr(m, "_reset_parameters", None)  # nn.MultiheadAttention, nn.Transformer
    return fn if callable(fn) else None


def _construction_init(model: nn.Module, plan: Plan) -> None:
    """Re-run the model's own init in the order its constructor runs it: children before parents (a module's
    ``reset_parameters`` runs at the end of its ``__init__``), and for transformers models ``init_weights()`` at
    the end of every PreTrainedModel (``post_init``), after the torch default init of its submodules."""
    hf_base = None
    if hasattr(model, "_init_weights") and hasattr(model, "config"):
        try:
            from transformers import PreTrainedModel as hf_base
        except ImportError:  # pragma: no cover
            hf_base = None
        if hf_base is not None and isinstance(model, hf_base) and not hasattr(model, "init_weights"):
            hf_base = None  # very old transformers: fall back to _init_weights over every module
            for m in model.modules():
                model._init_weights(m)
            if hasattr(model, "tie_weights"):
                model.tie_weights()
            return
    if hf_base is not None:  # clear "already initialised" flags, or init_weights() would skip every module
        for m in model.modules():
            m.__dict__.pop("_is_hf_initialized", None)
            for t in list(m._parameters.values()) + list(m._buffers.values()):
                if t is not None and "_is_hf_initialized" in getattr(t, "__dict__", {}):
                    del t._is_hf_initialized

    def visit(m: nn.Module) -> None:
        for c in m.children():
            visit(c)
        if hf_base is not None and isinstance(m, hf_base):
            m.init_weights()
        else:
            fn = _reset_fn(m)
            if fn is not None:
                fn()

    with _untied(model, plan):
        visit(model)


_CLASS_CACHE: dict[type, type] = {}


def _remake_muplified(fn, args):
    obj = fn(*args)
    obj.__class__ = _mu_class(type(obj))
    return obj


def _mu_class(cls: type) -> type:
    if cls not in _CLASS_CACHE:
        ns = {"_mup_orig_class": cls, "__module__": cls.__module__}
        if callable(getattr(cls, "save_pretrained", None)):
            ns["save_pretrained"] = _save_pretrained_as_original
        _CLASS_CACHE[cls] = type(f"Mu{cls.__name__}", (MuplifiedModule, cls), ns)
    return _CLASS_CACHE[cls]


def _save_pretrained_as_original(self, *args, **kwargs):
    # transformers writes config.architectures = [type(model).__name__]: save as the original class, so that the
    # files name a real architecture (MuGPT2LMHeadModel exists only at run time)
    cls = type(self)
    self.__class__ = cls._mup_orig_class
    try:
        return self.save_pretrained(*args, **kwargs)
    finally:
        self.__class__ = cls


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
