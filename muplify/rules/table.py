"""The op table: one entry per ATen op overload, holding its dimension rule and what the op *is*.

Every later stage asks the table instead of keeping its own set of ops (a view, a cast, a norm and its gain/bias
slots, a linear layer and its weight/bias/input slots, a product of two operands, a softmax, a selection, ...)::

    @rule(aten.native_layer_norm, norm=Norm(weight=2, bias=3), needs=("input",))   # a packet: every overload
    def _layer_norm(g: DimGraph, call: Call) -> None: ...

A rule reads its arguments from the :class:`~muplify.rules.call.Call` the dispatcher builds once per node (names
from the op's schema, dims of its operands); ``needs`` names the operands (by name or position; ``OUT``/``OUTS``
for the result) whose dims it needs: without them the rule is not run.

An op is given as an ``OpOverload``, an ``OpOverloadPacket`` (expanded to every overload it has), a string
``"packet.overload"`` (resolved in ``torch.ops.aten``; a packet this torch lacks is skipped, an overload the packet
lacks raises: a misspelling) or, for a custom op, a string with a namespace (``"ns.op.overload"``, kept as is).
Registering an op twice raises: each op has one entry.  :func:`declare` gives properties to an op that needs no rule
of its own (a pointwise op: ``mul`` is linear in each operand).  Registrations made after import (user rules) are
kept apart from the built-ins (:func:`user_ops`) and can be removed (:func:`unregister`).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable

import torch
import torch.fx as fx

from .call import Rule

aten = torch.ops.aten

__all__ = ["OpInfo", "Norm", "Layer", "rule", "declare", "lookup", "rule_for", "unregister", "user_ops", "TABLE",
           "is_view_like", "is_cast", "keeps_axes", "norm_slots", "is_norm", "layer_slots", "product_operands",
           "is_softmax", "is_selection", "is_arg_reduction", "is_sum_reduction", "is_linear_combination",
           "is_scaling", "is_add", "is_softmax_path", "is_pointwise"]


@dataclass(frozen=True)
class Norm:
    """A normalisation: the argument slots of its gain (weight) and bias (None: the op has no bias argument)."""

    weight: int
    bias: int | None = None
    stats: tuple[int, ...] = ()  # running statistics (batch norm): per-channel tensors like the gain


@dataclass(frozen=True)
class Layer:
    """A layer op with a weight operand: the slots of its weight, bias and input (None: none), and the axis of the
    weight *operand* that becomes the output's channels ((out, in) for linear/conv: 0; (in, out) for addmm: 1)."""

    weight: int
    bias: int | None
    input: int | None
    out_axis: int = 0


@dataclass(frozen=True)
class OpInfo:
    """What one op is.  ``fn`` is its dimension rule (None: the pointwise default or none)."""

    fn: Rule | None = None
    view_like: bool = False  # moves or reinterprets entries, no arithmetic (view, permute, expand, casts, dropout)
    cast: bool = False  # the same values and axes as its input (a copy, a dtype cast): views of a parameter stay views
    keeps_axes: bool = False  # every output axis is the input's axis in place (clone, casts, dropout)
    norm: Norm | None = None
    layer: Layer | None = None
    product: tuple[int, int] | None = None  # the two operands multiplied (mm, bmm, matmul, addmm, baddbmm)
    softmax: bool = False
    softmax_path: bool = False  # attention scores pass through it on their way to/from a softmax
    selection: bool = False  # selects entries along an axis (split, unbind, select, slice, getitem)
    arg_reduction: bool = False  # reduces by selecting along the reduced axes (argmax, max.dim)
    sum_reduction: bool = False  # sums (or averages) its input's entries along the reduced axes (sum.dim, mean.dim)
    linear_combination: bool = False  # linear in its tensor operands (add, sub, neg, cat, a product by one tensor)
    scaling: bool = False  # multiplies/divides by a factor (mul, div)
    add: bool = False  # a sum of two tensors (a residual add candidate)
    user: bool = False  # registered after the built-ins were loaded


_PROPS = tuple(f.name for f in fields(OpInfo) if f.name not in ("fn", "user"))
TABLE: dict = {}  # op overload (or custom op name) -> OpInfo
_BUILTINS_LOADED = False


def _resolve(op) -> list:
    if isinstance(op, torch._ops.OpOverloadPacket):
        return [getattr(op, name) for name in op.overloads()]
    if isinstance(op, str):
        parts = op.split(".")
        if len(parts) == 3:  # ns.op.overload: a custom op, matched by name
            return [op]
        packet_name, overload = parts[0], parts[1] if len(parts) > 1 else "default"
        packet = getattr(aten, packet_name, None)
        if packet is None:
            return []  # an op a newer torch has
        target = getattr(packet, overload, None) if overload in packet.overloads() else None
        if target is None:
            raise ValueError(f"aten.{packet_name} has no overload {overload!r} (it has: "
                             f"{', '.join(sorted(packet.overloads()))})")
        return [target]
    return [op]


def _check(props: dict) -> None:
    unknown = set(props) - set(_PROPS)
    if unknown:
        raise TypeError(f"unknown op properties {sorted(unknown)}; known: {', '.join(_PROPS)}")


def rule(*ops, needs: tuple = (), **props) -> Callable:
    """Register ``fn(g, call)`` as the dimension rule of ``ops``, run only when the dims of the operands in
    ``needs`` are known, with the properties ``props`` (see :class:`OpInfo`)."""
    _check(props)
    targets = [t for op in ops for t in _resolve(op)]

    def register(fn):
        entry = Rule(fn, tuple(needs))
        for t in targets:  # check every target before registering any: a failed registration changes nothing
            old = TABLE.get(t)
            if old is not None and old.fn is not None:
                raise ValueError(f"{t} already has a rule ({old.fn.fn.__module__}.{old.fn.fn.__name__}); "
                                 f"unregister it first to replace it with {fn.__name__}")
            clash = {k for k, v in props.items() if old is not None and getattr(old, k) not in (v, False, None)}
            if clash:
                raise ValueError(f"{t}: properties {sorted(clash)} were declared differently")
        for t in targets:
            old = TABLE.get(t)  # declared properties, now a rule: keep both
            TABLE[t] = replace(old, fn=entry, **props) if old is not None else OpInfo(
                fn=entry, user=_BUILTINS_LOADED, **props)
        return fn

    return register


def declare(*ops, **props) -> None:
    """Give ``ops`` properties without a rule of their own (the pointwise default rule applies to them)."""
    _check(props)
    for t in (t for op in ops for t in _resolve(op)):
        if t in TABLE:
            raise ValueError(f"{t} is already in the op table")
        TABLE[t] = OpInfo(user=_BUILTINS_LOADED, **props)


def unregister(*ops) -> None:
    for t in (t for op in ops for t in _resolve(op)):
        TABLE.pop(t, None)


def user_ops() -> list:
    """Ops registered after the built-in rules (by a user or a test)."""
    return [t for t, info in TABLE.items() if info.user]


def _builtins_loaded() -> None:
    global _BUILTINS_LOADED
    _BUILTINS_LOADED = True


_NONE = OpInfo()


def lookup(target) -> OpInfo:
    """The table entry of ``target`` (an empty entry for ops not in the table)."""
    try:
        return TABLE.get(target) or TABLE.get(str(target)) or _NONE
    except TypeError:  # unhashable target
        return _NONE


def is_pointwise(target) -> bool:
    return torch.Tag.pointwise in getattr(target, "tags", ())


def rule_for(target) -> Rule | None:
    """The rule of ``target``; an in-place op without one uses its out-of-place op's rule (or the pointwise one)."""
    fn = lookup(target).fn
    if fn is None and isinstance(target, torch._ops.OpOverload):
        packet = target.overloadpacket.__name__
        if packet.endswith("_") and not packet.endswith("__"):
            functional = getattr(getattr(aten, packet[:-1], None), target._overloadname, None)
            if functional is not None:
                fn = lookup(functional).fn or (_pointwise() if is_pointwise(functional) else None)
    return fn


def _pointwise() -> Rule:
    from .elementwise import POINTWISE

    return POINTWISE


def _target(x):
    return x.target if isinstance(x, fx.Node) else x


# -- queries: what later stages ask ------------------------------------------------------------------------------------
def is_view_like(op) -> bool:
    return lookup(_target(op)).view_like


def is_cast(op) -> bool:
    return lookup(_target(op)).cast


def keeps_axes(op) -> bool:
    return lookup(_target(op)).keeps_axes


def norm_slots(op) -> Norm | None:
    return lookup(_target(op)).norm


def is_norm(op) -> bool:
    return lookup(_target(op)).norm is not None


def layer_slots(op) -> Layer | None:
    return lookup(_target(op)).layer


def product_operands(op) -> tuple[int, int] | None:
    return lookup(_target(op)).product


def is_softmax(op) -> bool:
    return lookup(_target(op)).softmax


def is_softmax_path(op) -> bool:
    return lookup(_target(op)).softmax_path


def is_selection(op) -> bool:
    return lookup(_target(op)).selection


def is_arg_reduction(op) -> bool:
    return lookup(_target(op)).arg_reduction


def is_sum_reduction(op) -> bool:
    return lookup(_target(op)).sum_reduction


def is_linear_combination(op) -> bool:
    return lookup(_target(op)).linear_combination


def is_scaling(op) -> bool:
    return lookup(_target(op)).scaling


def is_add(op) -> bool:
    return lookup(_target(op)).add
