"""Stage 2: symbolic width analysis.

Runs the per-op rules of :mod:`muplify.shape_rules` over the captured graph, then decides which dims are *finite*
(fixed as the model widens: batch, sequence, vocabulary, classes, input channels, kernel sizes, and head_dim or the
head count by convention) and which are *infinite* (scale with width).  Every infinite dim gets the sympy expression
``(size / width_size) * w``, so an MLP down-projection has ``fan_in = 4*w``; finite dims are integers.

    >>> from muplify.capture import capture
    >>> from muplify.models import MLP
    >>> wa = analyse(capture(MLP(width=64)))
    >>> wa.params["net.2.weight"].axis_exprs
    [w, w]
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import sympy
import torch
import torch.fx as fx

from .capture import Capture
from .errors import WidthError
from .shape_rules import AttentionSite, DimGraph, Use, apply_rule

__all__ = ["WidthAnalysis", "ParamDims", "analyse", "W"]

W = sympy.Symbol("w", positive=True, integer=True)


@dataclass
class ParamDims:
    name: str  # canonical name (first in named_parameters())
    aliases: list[str]
    shape: tuple[int, ...]
    axis_exprs: list[sympy.Expr]  # per axis, in the width symbol
    uses: list[Use]
    placeholder: str


@dataclass
class WidthAnalysis:
    width_symbol: sympy.Symbol
    width_size: int
    params: dict[str, ParamDims]
    attention: list[AttentionSite]
    graph: fx.Graph
    dim_graph: DimGraph
    candidates: list[tuple[int, int]] = field(default_factory=list)  # (size, parameter-axis count) of infinite dims
    notes: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    finite_roots: dict[int, str] = field(default_factory=dict)  # union-find root -> why it is finite

    def dim_expr(self, d: int) -> sympy.Expr:
        """The expression of any dim of the graph (parameter axis or not)."""
        return _dim_expr(self.dim_graph, self.finite_roots, self.width_size, d)


def _dim_expr(g: DimGraph, finite: dict[int, str], width_size: int, d: int) -> sympy.Expr:
    if g.size[d] <= 1 or g.find(d) in finite:
        return sympy.Integer(max(g.size[d], 1))
    return sympy.Rational(g.size[d], width_size) * W

    def is_infinite(self, name: str, axes) -> bool:
        exprs = self.params[name].axis_exprs
        return any(exprs[a].has(self.width_symbol) for a in axes)


def _run_rules(g: DimGraph, graph: fx.Graph, gm: torch.nn.Module | None, cap: Capture | None) -> None:
    for node in graph.nodes:
        g.alloc(node)
        if node.op == "placeholder" and cap is not None and node.name in cap.param_names:
            g.origin[node.name] = (node.name, list(range(len(g.dims(node) or []))))
        elif node.op == "call_function":
            apply_rule(g, node, lambda n: _recurse(g, n, gm))


def _recurse(g: DimGraph, node: fx.Node, gm) -> None:
    """Higher-order ops (e.g. ``wrap_with_set_grad_enabled``) carry a subgraph: analyse it in place."""
    sub_node = next((a for a in node.args if isinstance(a, fx.Node) and a.op == "get_attr"), None)
    if sub_node is None or gm is None:
        return
    sub = getattr(gm, sub_node.target, None)
    if not isinstance(sub, fx.GraphModule):
        return
    inputs = [a for a in node.args if isinstance(a, fx.Node) and a is not sub_node]
    _run_rules(g, sub.graph, sub, None)
    placeholders = [n for n in sub.graph.nodes if n.op == "placeholder"]
    for outer, inner in zip(inputs, placeholders):
        g.eq_axes(outer, inner)
    out = next(n for n in sub.graph.nodes if n.op == "output")
    outs = out.args[0] if isinstance(out.args[0], (tuple, list)) else [out.args[0]]
    mine = g.node_dims.get(node.name)
    if mine and isinstance(mine[0], list):
        for inner, dims in zip(outs, mine):
            di = g.dims(inner)
            if di is not None and isinstance(dims, list):
                for a, b in zip(di, dims):
                    g.eq(a, b)


def _solve_finiteness(g: DimGraph, cap: Capture, head_scaling: str, forced_infinite: set[int]) -> dict[int, str]:
    finite: dict[int, str] = {}

    def mark(d: int, why: str) -> bool:
        r = g.find(d)
        if r in finite or r in forced_infinite or g.size[d] == 1:
            return False
        finite[r] = why
        return True

    for n in cap.user_inputs:
        for d in _flat(g.node_dims.get(n.name)):
            mark(d, f"axis of model input '{n.name}'")
    for n in cap.user_outputs:
        for d in _flat(g.node_dims.get(n.name)):
            mark(d, f"axis of model output '{n.name}'")
    for d, why in g.finite_reasons.items():
        mark(d, why)
    if head_scaling == "heads":
        for a in g.attention:
            # with a single head, head_dim *is* the model width: only a real head axis can take the growth
            if a.heads is not None and g.size[a.heads] > 1:
                mark(a.head_dim, "head_dim (fixed by head_scaling='heads')")
    elif head_scaling == "head_dim":
        for a in g.attention:
            if a.heads is not None:
                mark(a.heads, "number of heads (fixed by head_scaling='head_dim')")
    else:
        raise ValueError(f"head_scaling must be 'heads' or 'head_dim', got {head_scaling!r}")

    changed = True
    while changed:  # propagate through products and sums until nothing changes
        changed = False
        for _kind, out, parts in g.relations:
            ro, rparts = g.find(out), [g.find(p) for p in parts]
            if ro in finite:
                for p in parts:
                    changed |= mark(p, finite[ro] + " (factor of a finite dim)")
            elif all(p in finite for p in rparts):
                changed |= mark(out, "product/sum of finite dims")
    return finite


def _flat(x):
    if x is None:
        return []
    if isinstance(x, int):
        return [x]
    return [d for item in x for d in _flat(item)]


def analyse(cap: Capture, width: int | None = None, head_scaling: str = "heads",
            gm: torch.nn.Module | None = None) -> WidthAnalysis:
    """Assign every parameter axis a sympy expression in the width symbol ``w``."""
    g = DimGraph()
    _run_rules(g, cap.graph, gm if gm is not None else cap.graph_module, cap)

    param_axes = {ph: g.node_dims[ph] for ph in cap.param_names}
    forced: set[int] = set()
    if width is not None:
        if not isinstance(width, int) or isinstance(width, bool) or width <= 0:
            raise WidthError(f"width must be a positive int (the size of the width dimension), got {width!r}")
        sized = {g.find(d) for dims in param_axes.values() for d in dims if g.size[d] == width}
        if not sized:
            sizes = sorted({g.size[d] for dims in param_axes.values() for d in dims})
            raise WidthError(f"width={width} matches no parameter dimension; parameter dimension sizes are {sizes}")
    finite = _solve_finiteness(g, cap, head_scaling, forced)
    if width is not None and not any(r not in finite for r in sized):
        # no scaling dim of that size: let dims of that size that are finite only because they reach a model
        # output scale (a model without a readout, e.g. an encoder returning hidden states)
        forced = {r for r in sized if finite[r].startswith("axis of model output")}
        if not forced:
            why = "; ".join(sorted({finite[r] for r in sized}))
            raise WidthError(f"width={width}: every dimension of that size is fixed ({why}); pass the size of a "
                             "hidden dimension")
        finite = _solve_finiteness(g, cap, head_scaling, forced)

    counts: Counter = Counter()
    for ph, dims in param_axes.items():
        if ph in cap.param_names and cap.param_names[ph][0] in cap.unused_params:
            continue
        for d in dims:
            r = g.find(d)
            if g.size[d] > 1 and r not in finite:
                counts[r] += 1
    if not counts:
        shapes = {ns[0]: tuple(g.size[d] for d in param_axes[ph]) for ph, ns in cap.param_names.items()}
        raise WidthError(
            "no width dimension found: every parameter dimension is tied to the model's inputs or outputs, a kernel, "
            f"or a head_dim. Parameter shapes: {_short(shapes)}. If the model has a hidden size that should scale, "
            "pass width=<its size> (dimensions of that size then scale even if they reach an output)."
        )
    notes = []
    if width is not None:
        root = max((r for r in counts if g.size[r] == width), key=lambda r: counts[r])
    else:
        best = max(counts.values())
        top = sorted({g.size[r] for r, c in counts.items() if c == best})
        root = min((r for r, c in counts.items() if c == best), key=lambda r: g.size[r])
        if len(top) > 1:
            notes.append(f"width dims {top} are used equally often; chose the smallest ({top[0]}); pass width= to choose")
    width_size = g.size[root]
    expr = lambda d: _dim_expr(g, finite, width_size, d)  # noqa: E731

    params: dict[str, ParamDims] = {}
    for ph, names in cap.param_names.items():
        dims = param_axes[ph]
        uses = g.uses.get(ph, [])
        params[names[0]] = ParamDims(names[0], names, tuple(g.size[d] for d in dims), [expr(d) for d in dims], uses, ph)
    candidates = sorted(((g.size[r], c) for r, c in counts.items()), key=lambda t: -t[1])
    if g.unknown_ops:
        notes.append("ops without a shape rule (their dims are unconstrained): " +
                     ", ".join(f"{k} x{v}" for k, v in sorted(g.unknown_ops.items())))
    return WidthAnalysis(W, width_size, params, g.attention, cap.graph, g, candidates, notes, list(cap.unused_params),
                         finite)


def _short(d: dict, n: int = 8) -> str:
    items = list(d.items())
    s = ", ".join(f"{k}: {v}" for k, v in items[:n])
    return "{" + s + (f", ... ({len(items) - n} more)" if len(items) > n else "") + "}"
