"""Stage 5: apply a plan to the model — forward multipliers, init rescaling — and undo it (export).

Forward multipliers are module hooks (:class:`MuScale`): a readout multiplier scales the first input of the readout
module (or the output of the module feeding a functional readout); an attention multiplier scales the query slice of
the projection output.  Hooks are ordinary PyTorch ops inside ``Module.__call__``, so eager, ``torch.compile`` (any
nesting), DDP and FSDP2 all run them, and they hold only floats, so ``deepcopy`` keeps them.  Nothing is stored on
Parameters and no parameters or buffers are added: ``state_dict()`` keys stay those of the original model.
"""
from __future__ import annotations

import contextlib
import copy
import math

import torch
import torch.nn as nn

from .errors import PlanError
from .plan import Plan

__all__ = ["MuScale", "apply_plan", "validate_plan", "remove_hooks", "fold_multipliers", "apply_init"]


class MuScale:
    """Multiply a tensor (or, with ``channels``, a slice of its last axis) by a constant factor."""

    def __init__(self, factor: float, channels: tuple[int, int, int] | None = None, reason: str = ""):
        self.factor, self.channels, self.reason = float(factor), channels, reason

    def scale(self, t):
        if not isinstance(t, torch.Tensor):
            return t
        if self.channels is None:
            return t * self.factor
        start, stop, total = self.channels
        idx = torch.arange(total, device=t.device)
        s = torch.where((idx >= start) & (idx < stop), self.factor, 1.0).to(t.dtype)
        return t * s

    def __call__(self, module, args, *rest):  # registered as pre-hook (with_kwargs) or forward hook
        raise NotImplementedError

    def __repr__(self) -> str:
        ch = f", channels={self.channels}" if self.channels else ""
        return f"{type(self).__name__}({self.reason} x{self.factor:.4g}{ch})"


class MuScaleInput(MuScale):
    def __call__(self, module, args, kwargs):
        if args:
            return (self.scale(args[0]), *args[1:]), kwargs
        key = next((k for k, v in kwargs.items() if isinstance(v, torch.Tensor)), None)
        if key is not None:
            kwargs = {**kwargs, key: self.scale(kwargs[key])}
        return args, kwargs


class MuScaleOutput(MuScale):
    def __call__(self, module, args, output):
        if isinstance(output, tuple) and output:
            return (self.scale(output[0]), *output[1:])
        return self.scale(output)


def validate_plan(model: nn.Module, plan: Plan) -> None:
    """Fail loudly if ``plan`` was made for another model (names, shapes, modules)."""
    named = dict(model.named_parameters())
    missing = [n for n in plan.params if n not in named]
    extra = [n for n in named if n not in plan.params and not any(n in p.aliases for p in plan.params.values())]
    wrong = [(n, tuple(named[n].shape), p.shape) for n, p in plan.params.items()
             if n in named and tuple(named[n].shape) != tuple(p.shape)]
    modules = dict(model.named_modules())
    bad_sites = [s.module for s in plan.sites if s.module not in modules]
    _check_entries(plan)
    if missing or extra or wrong or bad_sites:
        parts = []
        if missing:
            parts.append(f"parameters in the plan but not in the model: {missing[:5]}")
        if extra:
            parts.append(f"parameters in the model but not in the plan: {extra[:5]}")
        if wrong:
            parts.append("shape mismatches (name, model, plan): " + ", ".join(map(str, wrong[:5])))
        if bad_sites:
            parts.append(f"modules named by multiplier sites but absent: {bad_sites[:5]}")
        raise PlanError(f"the plan does not match this {type(model).__name__} (plan made for "
                        f"{plan.model_class or 'another model'}): " + "; ".join(parts))


def _check_entries(plan: Plan) -> None:
    """Values a hand-edited plan file can get wrong; checked before anything is modified."""
    from .plan import ROLES

    bad = [f"{n}: role {p.role!r}" for n, p in plan.params.items() if p.role not in ROLES]
    bad += [f"{n}: {k} {getattr(p, k)!r}" for n, p in plan.params.items() for k in ("user_lr_mult", "user_init_mult")
            if not (isinstance(getattr(p, k), (int, float)) and math.isfinite(getattr(p, k)) and getattr(p, k) >= 0)]
    bad += [f"site on '{s.module}': where {s.where!r} (must be 'input' or 'output')"
            for s in plan.sites if s.where not in ("input", "output")]
    if bad:
        raise PlanError(f"invalid plan entries (roles must be one of {ROLES}, factors finite and >= 0): "
                        + "; ".join(bad[:5]))
    for f in plan.forward:  # derives everything: a missing site or a bad hp raises here, before any change
        if not (math.isfinite(f.factor) and f.factor > 0):
            raise PlanError(f"forward multiplier on '{f.module}': factor {f.factor!r} (must be finite and > 0)")


def apply_init(model: nn.Module, plan: Plan) -> None:
    """Rescale current values by each entry's init factor (and zero the query channels where asked)."""
    named = dict(model.named_parameters())
    rules = plan.rules()
    with torch.no_grad():
        for n in plan.params:
            t = named.get(n)
            if t is None or t.is_meta:
                continue
            r = rules[n]
            if r.init_scale == 0.0:
                t.zero_()
            elif r.init_scale != 1.0:
                t.mul_(r.init_scale)
            if r.zero_channels is not None:
                axis, start, stop = r.zero_channels
                t.narrow(axis, start, stop - start).zero_()


def apply_plan(model: nn.Module, plan: Plan, *, init: bool = True) -> None:
    """Register the plan's forward multipliers as hooks (skipping factors of exactly 1) and rescale the init.

    Everything is checked before the first change; if registering fails midway the hooks added so far are removed.
    """
    _check_entries(plan)
    named = dict(model.named_parameters())
    rules = plan.rules()
    bad = [n for n in plan.params if n in named and not named[n].is_floating_point() and not named[n].is_complex()
           and (rules[n].init_scale != 1.0 or rules[n].zero_channels is not None)]
    if init and bad:
        raise PlanError(f"cannot rescale non-float parameters {bad[:5]}: set their role to 'fixed'")
    sites = [(model.get_submodule(f.module), f) for f in plan.forward if f.factor != 1.0]  # base width: no hooks
    handles = []
    try:
        for mod, f in sites:
            if f.where == "input":
                handles.append(mod.register_forward_pre_hook(MuScaleInput(f.factor, f.channels, f.reason),
                                                             with_kwargs=True))
            else:
                handles.append(mod.register_forward_hook(MuScaleOutput(f.factor, f.channels, f.reason)))
    except BaseException:
        for h in handles:
            h.remove()
        raise
    if init:
        apply_init(model, plan)


def remove_hooks(model: nn.Module) -> None:
    for mod in model.modules():
        for d in (mod._forward_pre_hooks, mod._forward_hooks):
            for k in [k for k, h in d.items() if isinstance(h, MuScale)]:
                del d[k]
                mod._forward_pre_hooks_with_kwargs.pop(k, None)


def fold_multipliers(model: nn.Module, plan: Plan) -> list[str]:
    """Fold every forward multiplier of ``plan`` into the weights of ``model`` (hooks already removed), in place.

    Each multiplier folds into its site's fold targets (a readout weight, a norm gain, the query slice of a fused
    projection on the axis its use says holds output channels).  A tied target is untied at the site's module (the
    other use keeps the values).  Returns notes."""
    notes: list[str] = []
    named = dict(model.named_parameters())
    for f in plan.forward:
        if f.factor == 1.0:
            continue
        if not f.fold:
            raise PlanError(f"cannot fold the {f.reason} multiplier x{f.factor:.4g} at '{f.module}' into any weight "
                            "(no linear op, norm gain or bias produces that tensor alone); keep the muplified model, "
                            "or fold it by hand")
        for tgt in f.fold:
            t = _own_copy(model, f.module, plan[tgt.param].aliases, notes)
            t = named[tgt.param] if t is None else t
            with torch.no_grad():
                if tgt.axis is None:
                    t.mul_(f.factor)
                else:
                    t.narrow(tgt.axis, tgt.start, tgt.stop - tgt.start).mul_(f.factor)
    return notes


def _own_copy(model: nn.Module, module: str, aliases: list[str], notes: list[str]) -> torch.Tensor | None:
    """If the tied parameter ``aliases`` is held by ``module``, give that module its own copy (to be scaled)."""
    if len(aliases) < 2:
        return None
    mine = [a for a in aliases if a.rpartition(".")[0] == module]
    if not mine:
        return None
    mod_name, _, leaf = mine[0].rpartition(".")
    mod = model.get_submodule(mod_name)
    w = getattr(mod, leaf)
    tied = [n for n, p in model.named_parameters(remove_duplicate=False) if p is w]
    if len(tied) < 2:
        return w
    new = nn.Parameter(w.detach().clone(), requires_grad=w.requires_grad)
    setattr(mod, leaf, new)
    others = [t for t in tied if t != mine[0]]
    notes.append(f"untied {mine[0]} from {', '.join(others)}: the multiplier applies to this use only")
    notes.extend(_untie_in_config(model))
    return new


def _untie_in_config(model: nn.Module) -> list[str]:
    """After untying, stop transformers from re-tying: ``tie_word_embeddings=False`` in every (sub)config, and the
    cached tie mapping cleared.  Otherwise ``from_pretrained`` / ``tie_weights()`` would share the weights again."""
    notes, seen = [], set()
    for m in model.modules():
        cfg = getattr(m, "config", None)
        cfgs = [cfg, getattr(cfg, "text_config", None)] if cfg is not None else []
        for c in cfgs:
            if c is not None and id(c) not in seen and getattr(c, "tie_word_embeddings", False):
                seen.add(id(c))
                c.tie_word_embeddings = False
                notes.append(f"set {type(c).__name__}.tie_word_embeddings=False so that transformers does not re-tie "
                             "the untied weights (from_pretrained, tie_weights)")
        if isinstance(getattr(m, "all_tied_weights_keys", None), dict) and cfg is not None:
            m.all_tied_weights_keys = {}
    return notes


def strip_copy(model: nn.Module) -> nn.Module:
    """A deep copy with the muplify class swap undone and every muplify hook removed."""
    with _weight_norm_detached(model):
        out = copy.deepcopy(model)
    _recompute_weight_norm(out)
    orig = getattr(type(out), "_mup_orig_class", None)
    if orig is not None:
        out.__class__ = orig
    out.__dict__.pop("_mup_plan", None)
    remove_hooks(out)
    return out


def _weight_norms(model: nn.Module):
    from torch.nn.utils.weight_norm import WeightNorm

    for mod in model.modules():
        for hook in mod._forward_pre_hooks.values():
            if isinstance(hook, WeightNorm):
                yield mod, hook


@contextlib.contextmanager
def _weight_norm_detached(model: nn.Module):
    """``torch.nn.utils.weight_norm`` keeps its computed ``weight`` as a non-leaf tensor attribute, which
    ``copy.deepcopy`` refuses (pytorch#103001): drop it for the copy and recompute it after."""
    held = [(mod, hook.name, getattr(mod, hook.name)) for mod, hook in _weight_norms(model)
            if isinstance(getattr(mod, hook.name, None), torch.Tensor)]
    for mod, name, _ in held:
        delattr(mod, name)
    try:
        yield
    finally:
        for mod, name, value in held:
            setattr(mod, name, value)


def _recompute_weight_norm(model: nn.Module) -> None:
    for mod, hook in _weight_norms(model):
        setattr(mod, hook.name, hook.compute_weight(mod))
