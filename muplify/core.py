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
import dataclasses
from typing import Any, Callable

import torch
import torch.nn as nn

import warnings

from . import reuse, rewrite
from .capture import capture as _capture
from .twin import shallow_plan
from .classify import build_plan, detect_init_rules
from .module_kinds import assign_module_kinds
from .errors import MuplifyError, PlanError, WidthError, user_stacklevel
from .optim import make_optimizer, watch_plain_optimizers
from .options import HyperParams, Options
from .tuned_roles import check_roles
from .plan import Plan
from .policy import get_parametrization
from .width import analyse
from .width_source import reconsider_width, rounded_dim_notes

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
        """The applied plan (read-only): the facts, and what the μP policy derives from them (``print(mu.plan)``)."""
        return self.__dict__["_mup_plan"]

    def optimizer(self, optimizer_class: type | str, params=None, *, rule: str | None = None,
                  fallback: tuple | None = None, batch_size: int | None = None, steps: int | None = None,
                  **kwargs: Any):
        """An ordinary ``optimizer_class`` instance (a class or its name in ``torch.optim``) with μP param groups.

        ``rule=``: the μP family of an optimizer muplify does not know ('adam', 'sgd', 'sign', ...).
        ``fallback=(cls, kwargs)``: for optimizers that take only some parameters (``torch.optim.Muon``: hidden
        matrices), the optimizer of the others; the result is one :class:`muplify.optim.CombinedOptimizer`.
        ``batch_size=`` / ``steps=``: the target run's batch size and number of steps, relative to muplify()'s
        ``base_batch_size=`` / ``base_steps=``: the optimizer family's batch-size and duration rules
        (:mod:`muplify.policy.regime`, docs/rules.md).
        See :mod:`muplify.optim`."""
        return make_optimizer(self, self.plan, optimizer_class, params, rule=rule, fallback=fallback,
                              batch_size=batch_size, steps=steps, **kwargs)

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
        retie(self, self.plan)
        with torch.no_grad():
            if init_fn is not None:
                init_fn(self)
            else:
                _construction_init(self, self.plan)
        plan = self.plan
        if rule is not None and rule not in ("auto", "fan_in", "fan_out", "fixed"):
            raise MuplifyError(f"rule must be 'auto', 'fan_in', 'fan_out' or 'fixed', got {rule!r}")
        with plan._editable():
            options = plan.options
            if rule is not None:
                object.__setattr__(plan, "options", dataclasses.replace(options, init=rule))
            try:
                detect_init_rules(plan, self)
            finally:
                object.__setattr__(plan, "options", options)
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
    """Whether ``model`` (or the module inside its ``torch.compile`` wrapper) is muplified."""
    return isinstance(model, MuplifiedModule) or isinstance(getattr(model, "_orig_mod", None), MuplifiedModule)


def _unwrap(model):
    """muplify the module inside a ``torch.compile`` wrapper (attribute access on the wrapper reaches it); refuse
    distributed wrappers, whose hooks and buckets were set up for the original parameters."""
    if isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
        return model._orig_mod
    if isinstance(model, nn.parallel.DistributedDataParallel) or type(model).__name__ in (
            "FullyShardedDataParallel", "DataParallel"):
        raise MuplifyError(f"muplify() got a {type(model).__name__} wrapper: muplify the module before wrapping it "
                           f"(mu = muplify(model, ...); wrapped = {type(model).__name__}(mu)); fully_shard() may come "
                           "before or after")
    return model


def _check_args(model, base_width) -> None:
    if not isinstance(model, nn.Module):
        raise MuplifyError(f"muplify() takes an nn.Module, got {type(model).__name__}")
    if is_muplified(model):
        raise MuplifyError("this model is already muplified; call muplify() once (use mu.plan to inspect it)")
    if not isinstance(base_width, int) or isinstance(base_width, bool) or base_width <= 0:
        raise MuplifyError(f"base_width must be a positive int (the width the hyperparameters were tuned at), "
                           f"got {base_width!r}")
    if not any(True for _ in model.parameters()):
        raise MuplifyError(f"{type(model).__name__} has no parameters: there is nothing to parametrize")


def _base_shapes(model: nn.Module, base) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of the base model (a module on any device, or a zero-argument factory, built on meta)."""
    if not isinstance(base, nn.Module):
        if not callable(base):
            raise MuplifyError(f"base= takes the model built at the base width (any device, meta included) or a "
                               f"zero-argument factory building it; got {type(base).__name__}")
        with torch.device("meta"):
            base = base()
        if not isinstance(base, nn.Module):
            raise MuplifyError(f"the base= factory returned {type(base).__name__}, not an nn.Module")
    base = _unwrap(base)
    mine = {n: tuple(p.shape) for n, p in model.named_parameters()}
    theirs = {n: tuple(p.shape) for n, p in base.named_parameters()}
    missing, extra = sorted(set(mine) - set(theirs)), sorted(set(theirs) - set(mine))
    rank = [n for n in mine if n in theirs and len(mine[n]) != len(theirs[n])]
    if missing or extra or rank:
        raise MuplifyError("base= must be the same architecture at another width (same parameter names and ranks): "
                           + "; ".join(x for x in (f"missing in the base model: {missing[:5]}" if missing else "",
                                                   f"only in the base model: {extra[:5]}" if extra else "",
                                                   f"rank differs: {rank[:5]}" if rank else "") if x))
    if mine == theirs:
        raise MuplifyError("base= has exactly the model's shapes: nothing scales (pass the model built at the width "
                           "the hyperparameters were tuned at)")
    return theirs


def _base_width_from(wa, base_shapes: dict[str, tuple[int, ...]]) -> int:
    """The base model's size of the width dim: what the axes of that size have in the base model."""
    seen: dict[int, int] = {}
    for name, pd in wa.params.items():
        for n, b in zip(pd.shape, base_shapes[name]):
            if n == wa.width_size and b != n:
                seen[b] = seen.get(b, 0) + 1
    if not seen:
        raise WidthError(f"no parameter axis of the width size {wa.width_size} differs in the base model; pass "
                         "width=<the size of the dimension that scales>")
    return max(seen, key=seen.get)


@contextlib.contextmanager
def _gc_paused():
    """No cyclic garbage collection during the analysis.  Capture and analysis allocate hundreds of thousands of
    short-lived objects; each full collection they trigger walks every object of the process, the user's model
    included (on DeepSeek-V3 shapes about 0.6 s per muplify(); issue 20).  Collection resumes afterwards."""
    import gc

    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _options(options: dict[str, Any], **internal: Any) -> Options:
    """The keyword options of muplify()/analyze() as one validated :class:`Options` (a Parametrization instance is
    registered and recorded by name)."""
    options = dict(options)
    param = options.get("parametrization")
    if param is not None and not isinstance(param, str):
        options["parametrization"] = get_parametrization(param).name
    return Options.from_kwargs(**options, **internal)


def analyze(model: nn.Module, base_width: int | None = None, *, width: int | None = None, example_inputs=None,
            example_kwargs=None, hp: dict | HyperParams | None = None, base=None,
            overrides: dict[str, dict] | None = None, **options: Any) -> Plan:
    """Stages 1-3 only: return the plan (facts, with the policy's decisions as read-only views) without touching
    the model.  Arguments as :func:`muplify`.  ``capture="shallow"`` (default) analyses a shallow twin of repeated
    block stacks (:mod:`muplify.twin`; ``plan.notes`` says when the full model was captured instead and why);
    ``capture="full"`` captures every block."""
    model = _unwrap(model)
    options = _options(options, width_given=width is not None)
    if base is None and base_width is None:
        raise MuplifyError("muplify() needs base_width= (or base=<the model at the base width>, or plan=)")
    _check_args(model, 1 if base_width is None else base_width)
    hp = HyperParams.from_dict(hp)
    base_shapes = _base_shapes(model, base) if base is not None else None
    def derive(model: nn.Module, to_full) -> Plan:  # capture -> analysis -> facts, on the model or its shallow twin
        shapes = None if base_shapes is None else {n: base_shapes[to_full(n)] for n, _ in model.named_parameters()}
        cap = _capture(model, example_inputs, example_kwargs)
        wa = analyse(cap, width=width, head_scaling=options.head_scaling)
        width_lint: list[str] = []
        if shapes is None and width is None:  # base_width naming another scaling dim: the width it means
            wa, width_lint = reconsider_width(wa, model, base_width,
                                              lambda w: analyse(cap, width=w, head_scaling=options.head_scaling))
        bw = base_width
        if shapes is not None:
            derived = _base_width_from(wa, shapes)
            if bw is not None and bw != derived:
                raise MuplifyError(f"base_width={bw} disagrees with the base model, whose width dim has size "
                                   f"{derived}; pass one of them")
            bw = derived
        plan = build_plan(wa, model, bw, options=options, hp=hp, base_shapes=shapes)
        plan.capture_seconds = round(cap.seconds, 3)
        plan.lint.extend(width_lint)
        if shapes is None:
            plan.notes.extend(rounded_dim_notes(wa, bw))
        return plan

    with _gc_paused():
        plan = reuse.plan_for(  # inside reuse.reusing(): this structure's analysis at another width, re-evaluated
            model, lambda: shallow_plan(model, derive, options.depth is not None) if options.capture == "shallow"
            else derive(model, lambda n: n), hp=hp, base_width=base_width, width=width,
            example_inputs=example_inputs, example_kwargs=example_kwargs, base_shapes=base_shapes, options=options)
    for pattern, fields in (overrides or {}).items():
        if not isinstance(fields, dict):
            raise PlanError(f"overrides maps a name pattern to fields, e.g. {{'lm_head.weight': {{'role': "
                            f"'output'}}}}; got {pattern!r}: {fields!r}")
        plan.override(pattern, **fields)
    return plan


def muplify(model: nn.Module, base_width: int | None = None, *, width: int | None = None, example_inputs=None,
            example_kwargs=None, hp: dict | HyperParams | None = None, base=None,
            overrides: dict[str, dict] | None = None, plan: Plan | str | dict | None = None,
            **options: Any) -> nn.Module:
    """Give ``model`` the Maximal Update Parametrization relative to ``base_width``, in place.

    Returns the same object, its class swapped to a subclass with :class:`MuplifiedModule` mixed in (``.plan``,
    ``.optimizer()``, ``.to_standard()``, ``.mup_init()``).  On any error the model is left untouched.  A
    ``torch.compile`` wrapper is accepted: the module inside it is muplified (and the wrapper returned).

    Keyword ``**options`` are the fields of :class:`muplify.Options`, validated from their types (``head_scaling``,
    ``init``, ``weight_decay``, ``eps``, ``readout_zero_init``, ``query_zero_init``, ``base_depth``, ``depth``,
    ``depth_alpha``, ``parametrization``); an unknown name raises, listing the valid ones.
    ``parametrization=`` is ``"mup"`` (default), ``"sp"`` (standard: nothing scales; baselines through the same
    plan, optimizer and tools), ``"spectral"`` (Yang, Simon & Bernstein 2023: multipliers absorbed into init and
    per-layer learning rate, no forward hooks) or a :class:`muplify.policy.Parametrization`.

    ``hp=`` sets the μP hyperparameters a proxy sweep tunes (``output_mult``, ``attn_mult``, ``embed_mult``,
    ``init_mult={role: x}``, ``lr_mult={role: x}``), base-anchored: at ``width == base_width`` the model equals the
    original with those constants applied by hand.  ``hp["tuned_roles"]`` (what :func:`muplify.tune` records in
    ``result.best["hp"]``) is the roles the values were tuned under: a model that reads any parameter in another role
    is refused with :class:`RolesMismatchError`, naming the parameters, before anything is changed.
    ``eps="scaled"`` scales Adam's ε with the gradients (1/width_mult; ``"fixed"`` keeps it).  ``plan=`` (a
    :class:`Plan`, its dict, or a path to a plan JSON file) re-applies a saved plan without re-deriving it; it must
    match the model exactly.  ``overrides={"glob": {"role": "hidden"}}`` edits the plan's facts before the rewrite.

    ``base_depth=`` adds CompleteP depth scaling (Dey et al. 2025): every residual branch found in the graph is
    multiplied by ``(base_depth/depth)**depth_alpha`` (``depth`` inferred as the number of residual blocks, or given),
    with the matching learning-rate and ε rules; ``depth_alpha=1.0`` is CompleteP, ``0.5`` depth-μP.

    ``base_batch_size=`` / ``base_steps=`` record the proxy's training regime; ``mu.optimizer(..., batch_size=,
    steps=)`` then applies the optimizer family's batch-size and duration rules (docs/rules.md).

    ``base=`` (the model built at the base width, on any device including meta, or a zero-argument factory) is the
    exact route: an axis scales exactly when its size differs from the base model's and every base fan is read from
    it, so nothing about the width is guessed; ``base_width`` then follows from it.
    """
    wrapper = model if isinstance(model, torch._dynamo.eval_frame.OptimizedModule) else None
    model = _unwrap(model)
    if plan is not None:
        _options(options)  # a misspelt option is an error even when a saved plan decides
        if isinstance(plan, str):
            plan = Plan.from_json(plan)
        elif isinstance(plan, dict):
            plan = Plan.from_dict(plan)
        elif not isinstance(plan, Plan):
            raise PlanError(f"plan= takes a Plan, its dict (plan.to_dict()) or a plan JSON path; got "
                            f"{type(plan).__name__}")
        if base_width is not None and base_width != plan.base_width:
            raise PlanError(f"base_width={base_width} disagrees with the plan's base_width={plan.base_width}")
        _check_args(model, plan.base_width)
        rewrite.validate_plan(model, plan)
        plan = plan.copy()
        if any(not p.module_kind for p in plan.params.values()):  # a plan file older than module kinds
            assign_module_kinds(plan)
        if hp is not None:
            plan.hp = HyperParams.from_dict(hp)
        for pattern, fields in (overrides or {}).items():
            plan.override(pattern, **fields)
        apply_init = False  # a saved plan records an init that already happened; load the checkpoint next
    else:
        plan = analyze(model, base_width, width=width, example_inputs=example_inputs, example_kwargs=example_kwargs,
                       hp=hp, base=base, overrides=overrides, **options)
        apply_init = True
    check_roles(plan.hp.tuned_roles, plan)  # hp tuned under other roles would act on other weights: refuse
    plan.rules()  # derive everything now: a missing site or an impossible request raises before any change
    # everything that can fail has run; from here on the model is modified
    rewrite.apply_plan(model, plan, init=apply_init)
    model.__class__ = _mu_class(type(model))
    model.__dict__["_mup_plan"] = plan
    plan.frozen = True
    watch_plain_optimizers(model)
    warns = plan.warnings
    if warns:
        warnings.warn("muplify: " + "\n  - ".join(["μP lint (also in print(mu.plan)):"] + warns), UserWarning,
                      stacklevel=user_stacklevel())
    return wrapper if wrapper is not None else model
