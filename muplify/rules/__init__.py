"""Per-op dimension rules and the op table: how each ATen op relates the dimensions of its inputs and outputs, and
what the op is (a view, a norm with a gain slot, a layer with a bias slot, a softmax, a selection).

:mod:`.graph` holds the dim graph the rules write to; :mod:`.table` the registry every stage asks; the rules live by
family in :mod:`.elementwise`, :mod:`.views`, :mod:`.reductions`, :mod:`.contractions`, :mod:`.indexing`,
:mod:`.norms` and :mod:`.attention`.  A parameter that an op reads as data rather than as a weight (a learned table
fed to a norm) gets an elementwise use with detail "data"; views of a parameter (transposes, slices, ``W[e]``, weight
norm's direction, cat/stack of parameters) carry its origin so that the op using the view records the use.
Supporting a new op is one function::

    @rule(torch.ops.aten.my_norm, norm=Norm(weight=1, bias=2), needs=("input",))  # every overload of the packet
    def _my_norm(g: DimGraph, call: Call) -> None:  # the call: arguments by schema name, dims of the operands
        g.eq_axes(call.arg("input"), call.node)  # e.g. shape-preserving

and classify (the gain), the sites (folding a multiplier into gain and bias) read its properties from the table.
Ops tagged ``pointwise`` by ATen need no rule; an in-place op uses its out-of-place op's rule; a custom op is
registered by its name (``@rule("ns.op.default")``).  Ops with no rule leave their output dims unconstrained, are
listed in the plan's notes, and a parameter used only by them is a marked guess.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.fx as fx

from . import table
from .call import OUT, OUTS, Call
from .graph import CONTRACTING_KINDS, AttentionSite, DimGraph, Selection, SelectionKind, Use
from .table import Layer, Norm, declare, rule, unregister

# the rule families register themselves on import
from . import elementwise, views, reductions, contractions, indexing, norms, attention, fourier  # noqa: E402,F401,I001
from .attention import found_upstream
from .elementwise import POINTWISE, _no_op

table._builtins_loaded()

__all__ = ["DimGraph", "Use", "AttentionSite", "Selection", "SelectionKind", "CONTRACTING_KINDS", "rule", "declare", "unregister", "Norm", "Layer",
           "Call", "OUT", "OUTS", "table", "apply_rule", "found_upstream"]


def apply_rule(g: DimGraph, node: fx.Node, recurse: Callable[[fx.Node], None]) -> None:
    r = table.rule_for(node.target)
    if r is not None:
        before = {p: len(g.uses.get(p, ())) for p in _operand_params(g, node)}  # the uses a data operand could get
        try:
            r(g, node)
        except Exception as e:
            # as torch.fx.passes.shape_prop does: say which node the rule failed on
            e.add_note(f"while applying the dimension rule {r.fn.__module__}.{r.fn.__name__} to: "
                       f"{node.format_node()}")
            raise
        if r.fn is not _no_op:
            _data_uses(g, node, before)
    elif table.is_pointwise(node.target):
        POINTWISE(g, node)
    elif node.target is not None and "wrap_with" in str(node.target) or (
            isinstance(node.target, torch._ops.HigherOrderOperator)):
        recurse(node)
    else:
        key = str(node.target)
        g.unknown_ops[key] = g.unknown_ops.get(key, 0) + 1
        for i, a in enumerate(node.args):
            for param, _ in g.origins(a):
                g.uses.setdefault(param, []).append(Use("unknown", node, i, (), ()))


def _operands(node: fx.Node):
    for a in node.args:
        yield from (a if isinstance(a, (list, tuple)) else [a])


def _operand_params(g: DimGraph, node: fx.Node) -> set[str]:
    return {param for x in _operands(node) for param, _ in g.origins(x)}


def _data_uses(g: DimGraph, node: fx.Node, before: dict[str, int]) -> None:
    """A parameter the rule neither used nor viewed is an operand fed as data (a learned table through a norm, a
    learned query into a projection): record it as used elementwise, every axis a feature axis."""
    derived = {p for p, _ in g.origins(node)}
    derived |= {p for (n, _), orgs in g.item_origins.items() if n is node for p, _ in orgs}
    for i, a in enumerate(node.args):
        for x in (a if isinstance(a, (list, tuple)) else [a]):
            for param, amap in g.origins(x):
                if param in derived:
                    continue
                new = g.uses.get(param, [])[before.get(param, 0):]
                if any(u.node is node for u in new):
                    continue
                axes = tuple(a for a in amap if a is not None)
                g.uses.setdefault(param, []).append(Use("elementwise", node, i, (), axes, "data"))
