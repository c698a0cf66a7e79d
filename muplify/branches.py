"""Residual branches ``x + f(x)``: which adds are residual (a parameter used on the way), the terms of a parallel block,
the module computing each branch, the block it belongs to (the depth count); projection shortcuts and long skips are
noted, not counted."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx

from .nodes import _flat_args, _is_module_output, _walk_views_back, module_of
from .rules import table as ops

aten = torch.ops.aten

__all__ = ["Branch", "find_branches"]


def _scope(node: fx.Node) -> list[str]:
    """Module paths enclosing ``node``, outermost first."""
    stack = node.meta.get("nn_module_stack") or {}
    return [v[0].replace("L['self'].", "").replace("L__self__.", "") for v in stack.values()]


def _bounded_ancestors(node: fx.Node, floor: int, order: dict) -> list[fx.Node]:
    """Ancestors of ``node`` (itself included) no earlier than position ``floor`` in the graph, in graph order."""
    seen, stack = {node}, [node]
    while stack:
        n = stack.pop()
        for a in _flat_args(n.args):
            if isinstance(a, fx.Node) and a not in seen and order[a] >= floor:
                seen.add(a)
                stack.append(a)
    return sorted(seen, key=order.__getitem__)


def _between(stream: fx.Node, branch: fx.Node, order: dict) -> list[fx.Node]:
    """Nodes on a path from ``stream`` to ``branch``: descendants of the stream among the branch's ancestors."""
    on: set[fx.Node] = {stream}
    for n in _bounded_ancestors(branch, order[stream], order):
        if n is not stream and any(isinstance(a, fx.Node) and a in on for a in _flat_args(n.args)):
            on.add(n)
    on.discard(stream)
    return [n for n in on]


def _uses_params(nodes, origin: dict) -> set[str]:
    """Parameter placeholders used (not merely viewed) by ``nodes``."""
    used = set()
    for n in nodes:
        if n in origin:
            continue  # a view of a parameter, not a use
        for a in _flat_args(n.args):
            if isinstance(a, fx.Node) and a in origin:
                used.add(origin[a][0])
    return used


def _branch_terms(node: fx.Node, stream: fx.Node, order: dict, origin: dict) -> list[fx.Node]:
    """A parallel block adds several branches (x + attn(ln(x)) + mlp(ln(x))): split a sum of independent
    parameterised terms into its terms."""
    if ops.is_add(node.target) and all(isinstance(a, fx.Node) for a in node.args[:2]):
        a, b = node.args[:2]
        anc_a = set(_bounded_ancestors(a, order[stream], order))
        anc_b = set(_bounded_ancestors(b, order[stream], order))
        if a not in anc_b and b not in anc_a and all(_uses_params(_between(stream, t, order), origin)
                                                     for t in (a, b)):
            return _branch_terms(a, stream, order, origin) + _branch_terms(b, stream, order, origin)
    return [node]


def _walk_scalings_back(node: fx.Node) -> list[fx.Node]:
    """``node`` and the factors it is a product of, through views: a constant (Granite's ``branch *
    residual_multiplier``) or a computed gate (DiT's adaLN ``gate * proj(h)``).  A multiplier on a factor that feeds
    nothing else is the same multiplier on the product, so the module computing that factor can carry it."""
    out, todo = [], [node]
    while todo:
        node = todo.pop(0)
        out.append(node)  # the node itself may be the module output (a view returned by the module)
        node = _walk_views_back(node)
        out.append(node)
        if not (node.op == "call_function" and ops.is_scaling(node.target) and len(node.users) == 1):
            continue
        a, b = node.args[:2]
        if isinstance(a, fx.Node) and isinstance(b, (int, float)):
            todo.append(a)
        elif isinstance(b, fx.Node) and isinstance(a, (int, float)) and node.target in (aten.mul.Tensor,
                                                                                    aten.mul.Scalar):
            todo.append(b)
        elif node.target == aten.mul.Tensor and isinstance(a, fx.Node) and isinstance(b, fx.Node):
            todo += [f for f in (b, a) if len(f.users) == 1]  # the later operand first: usually the branch's layer
    return list(dict.fromkeys(out))


def _branch_module(term: fx.Node, add: fx.Node) -> str | None:
    """The outermost module whose output is the branch term alone (before or after views and constant factors)
    and that does not contain the add."""
    add_scope = set(_scope(add))
    for node in _walk_scalings_back(term):
        for path in _scope(node):
            if path not in add_scope and path != "" and _is_module_output(node, path):
                return path
    return None


def _block_key(add: fx.Node, module: str | None) -> str:
    """Which block a residual add belongs to: the outermost enclosing module indexed in a container
    (``blocks.3``, ``model.layers.3``, ``layer2.1``; T5's ``block.3`` rather than its sublayer ``block.3.layer.1``),
    else the module holding the add, else the branch's."""
    for path in _scope(add):
        if path.rpartition(".")[2].isdigit():
            return path
    if module:
        parts = module.split(".")
        for i in range(len(parts)):
            if parts[i].isdigit():
                return ".".join(parts[: i + 1])
    scope = _scope(add)
    return scope[-1] if scope and scope[-1] else (module or add.name)


def _fork(a: fx.Node, b: fx.Node, order: dict) -> fx.Node | None:
    """The latest common ancestor of ``a`` and ``b`` (searched in growing windows before them)."""
    lo = min(order[a], order[b])
    window = 64
    while True:
        floor = max(0, lo - window)
        common = set(_bounded_ancestors(a, floor, order)) & set(_bounded_ancestors(b, floor, order))
        if common:
            return max(common, key=order.__getitem__)
        if floor == 0:
            return None
        window *= 4


def _stream_candidates(side: fx.Node, depth: int = 3) -> list[fx.Node]:
    """The stream a branch was added to: ``side`` itself or, for ``(x + f(x)) + g(x)`` (a parallel block written
    left to right), the operands of the earlier adds."""
    out = [side]
    if depth and side.op == "call_function" and ops.is_add(side.target):
        for a in side.args[:2]:
            if isinstance(a, fx.Node):
                out += _stream_candidates(a, depth - 1)
    return out


@dataclass
class Branch:
    """One residual branch ``x + f(x)`` found in the graph."""

    add: fx.Node
    stream: fx.Node
    term: fx.Node
    module: str | None  # the module whose output is the branch alone (None: no such boundary)
    block: str  # the block it belongs to (for the depth count)
    params: set[str]  # placeholders of the parameters used inside the branch


def find_branches(ctx) -> tuple[list[Branch], list[str]]:
    """Residual adds: ``add(x, f)`` where ``x`` is an ancestor of ``f`` and a parameter is used on the way (a
    plain ``x + g(x)`` without weights, e.g. GELU's tanh polynomial, is not a branch).  An add whose two sides are
    both computed from a common input with weights (a projection shortcut) is not a residual add: the block is a
    transition and keeps its scale.  ``ctx`` is the sites' :class:`~muplify.sites.SiteContext`.  Returns (branches,
    notes)."""
    graph = ctx.analysis.graph
    order = {n: i for i, n in enumerate(graph.nodes)}
    origin = ctx.analysis.view_origins
    out: list[Branch] = []
    notes: list[str] = []
    shortcuts: list[str] = []
    long_skips: list[str] = []
    adds: set[fx.Node] = set()  # residual adds found so far (graph order: inner blocks first)
    inside: set[fx.Node] = set()  # nodes inside the branches found (a parallel block's attn + mlp sum)
    for node in graph.nodes:
        if node.op != "call_function" or not ops.is_add(node.target) or len(node.args) < 2:
            continue
        a, b = node.args[:2]
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
            continue
        va, vb = a.meta.get("val"), b.meta.get("val")
        if not (isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor)) or va.shape != vb.shape:
            continue
        found = False
        for side, branch in ((a, b), (b, a)):
            for stream in _stream_candidates(side):
                if order[branch] < order[stream] or stream not in set(
                        _bounded_ancestors(branch, order[stream], order)):
                    continue
                path = _between(stream, branch, order)
                if not _uses_params(path, origin):
                    continue
                if any(n in adds for n in path):  # a skip over whole residual blocks (U-Net, Funnel's decoder)
                    long_skips.append(module_of(node) or node.name)
                    found = True
                    break
                for term in _branch_terms(branch, stream, order, origin):
                    mod = _branch_module(term, node)
                    out.append(Branch(node, stream, term, mod, _block_key(node, mod),
                                      _uses_params(_between(stream, term, order), origin)))
                adds.add(node)
                inside.update(path)
                inside.add(branch)
                found = True
                break
            if found:
                break
        if not found and a in ctx.dep and b in ctx.dep:
            fork = _fork(a, b, order)
            if fork is not None and all(_uses_params(_between(fork, t, order), origin) for t in (a, b)):
                shortcuts.append(node)
    if long_skips:
        notes.append(f"{len(long_skips)} skip connection(s) over whole residual blocks (e.g. in '{long_skips[0]}'): "
                     "not a residual branch; not scaled, not counted in depth")
    shortcuts = [module_of(n) or n.name for n in shortcuts if n not in inside]
    if shortcuts:
        notes.append(f"{len(shortcuts)} projection-shortcut adds (weights on both sides, e.g. in "
                     f"'{shortcuts[0]}'): transition blocks, not residual branches; not scaled, not counted in depth")
    return out, notes
