"""Stage 4: apply a plan to the model — forward multipliers, init rescaling — and undo it (export).

Forward multipliers are module hooks (:class:`MuScale`): a readout multiplier scales the first input of the readout
module (or the output of the module feeding a functional readout); an attention multiplier scales the query slice of
the projection output.  Hooks are ordinary PyTorch ops inside ``Module.__call__``, so eager, ``torch.compile`` (any
nesting), DDP and FSDP2 all run them, and they hold only floats, so ``deepcopy`` keeps them.  Nothing is stored on
Parameters and no parameters or buffers are added: ``state_dict()`` keys stay those of the original model.
"""
from __future__ import annotations

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
    bad_sites = [f.module for f in plan.forward if f.module not in modules]
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
            parts.append(f"modules named by forward multipliers but absent: {bad_sites[:5]}")
        raise PlanError(f"the plan does not match this {type(model).__name__} (plan made for "
                        f"{plan.model_class or 'another model'}): " + "; ".join(parts))


def _check_entries(plan: Plan) -> None:
    """Values a hand-edited plan file can get wrong; checked before anything is modified."""
    from .plan import ROLES

    bad = [f"{n}: role {p.role!r}" for n, p in plan.params.items() if p.role not in ROLES]
    bad += [f"{n}: init_scale {p.init_scale!r}" for n, p in plan.params.items()
            if not (isinstance(p.init_scale, (int, float)) and math.isfinite(p.init_scale) and p.init_scale >= 0)]
    bad += [f"forward multiplier on '{f.module}': where {f.where!r} (must be 'input' or 'output')"
            for f in plan.forward if f.where not in ("input", "output")]
    bad += [f"forward multiplier on '{f.module}': factor {f.factor!r}" for f in plan.forward
            if not (isinstance(f.factor, (int, float)) and math.isfinite(f.factor) and f.factor > 0)]
    if bad:
        raise PlanError(f"invalid plan entries (roles must be one of {ROLES}, factors finite and > 0): "
                        + "; ".join(bad[:5]))


def apply_init(model: nn.Module, plan: Plan) -> None:
    """Rescale current values by each entry's init_scale (and zero the query rows where asked)."""
    named = dict(model.named_parameters())
    with torch.no_grad():
        for n, p in plan.params.items():
            t = named.get(n)
            if t is None or t.is_meta:
                continue
            if p.init_scale == 0.0:
                t.zero_()
            elif p.init_scale != 1.0:
                t.mul_(p.init_scale)
            if p.zero_channels is not None:
                axis, start, stop = p.zero_channels
                t.narrow(axis, start, stop - start).zero_()
                bias = named.get(n.rpartition(".")[0] + ".bias")
                if bias is not None and bias.dim() == 1 and bias.shape[0] == t.shape[axis]:
                    bias.narrow(0, start, stop - start).zero_()


def apply_plan(model: nn.Module, plan: Plan, *, init: bool = True) -> None:
    """Register the plan's forward multipliers as hooks (skipping factors of exactly 1) and rescale the init.

    Everything is checked before the first change; if registering fails midway the hooks added so far are removed.
    """
    _check_entries(plan)
    named = dict(model.named_parameters())
    bad = [n for n, p in plan.params.items() if n in named and not named[n].is_floating_point()
           and not named[n].is_complex() and (p.init_scale != 1.0 or p.zero_channels is not None)]
    if init and bad:
        raise PlanError(f"cannot rescale non-float parameters {bad[:5]}: set their init_scale to 1")
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
    """Fold every forward multiplier of ``plan`` into the weights of (a copy-free) ``model`` in place.

    Returns notes (e.g. which tied weights had to be untied).  The model's hooks must already be removed.
    """
    notes: list[str] = []
    for f in plan.forward:
        if f.factor == 1.0:
            continue
        mod = model.get_submodule(f.module)
        w = getattr(mod, "weight", None)
        b = getattr(mod, "bias", None)
        if not isinstance(w, torch.Tensor):
            raise PlanError(f"cannot fold the {f.reason} multiplier into '{f.module}' ({type(mod).__name__}): it has "
                            "no weight; keep the muplified model, or fold it by hand")
        tied = [n for n, p in model.named_parameters(remove_duplicate=False) if p is w]
        if len(tied) > 1:
            mod.weight = nn.Parameter(w.detach().clone(), requires_grad=w.requires_grad)
            notes.append(f"untied {tied[0]} from {', '.join(t for t in tied if t != tied[0])}: the readout "
                         f"multiplier x{f.factor:.4g} applies to the readout use only")
            w = mod.weight
            notes.extend(_untie_in_config(model))
        out_axis = _out_axis(mod, w)
        with torch.no_grad():
            if f.where == "input":
                w.mul_(f.factor)  # y = (c·x)W + b = x(cW) + b
            else:
                if f.channels is None:
                    w.mul_(f.factor)
                    if isinstance(b, torch.Tensor):
                        b.mul_(f.factor)
                else:
                    start, stop, _ = f.channels
                    w.narrow(out_axis, start, stop - start).mul_(f.factor)
                    if isinstance(b, torch.Tensor):
                        b.narrow(0, start, stop - start).mul_(f.factor)
    return notes


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


def _out_axis(mod: nn.Module, w: torch.Tensor) -> int:
    # HF GPT-2 Conv1D stores (in, out); everything else stores out first
    return 1 if type(mod).__name__ == "Conv1D" else 0


def strip_copy(model: nn.Module) -> nn.Module:
    """A deep copy with the muplify class swap undone and every muplify hook removed."""
    out = copy.deepcopy(model)
    orig = getattr(type(out), "_mup_orig_class", None)
    if orig is not None:
        out.__class__ = orig
    out.__dict__.pop("_mup_plan", None)
    remove_hooks(out)
    return out
