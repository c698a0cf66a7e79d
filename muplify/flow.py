"""Stage 2's weight flow: which dims of the dim graph the model's weights read (contract) and write (produce), and
from what -- the facts :mod:`muplify.evidence` reads to find readouts, learned constants and input-side bottlenecks."""
from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from .capture import Capture
from .rules import CONTRACTING_KINDS, DimGraph

__all__ = ["Flow", "flat_dims", "flow_of", "input_dependent", "roots"]


def flat_dims(x) -> list[int]:
    """The dim ids of a node's dims (nested lists for tuple values), flattened."""
    if x is None:
        return []
    if isinstance(x, int):
        return [x]
    return [d for item in x for d in flat_dims(item)]


def roots(g: DimGraph, dims) -> set[int]:
    """The union-find roots of a node's dims (nested lists of dim ids), size-1 dims left out."""
    return {g.find(d) for d in flat_dims(dims) if g.size[d] > 1}


def _use_roots(g: DimGraph, param_axes: dict[str, list[int]], ph: str, axes) -> set[int]:
    dims = param_axes.get(ph) or []
    return {g.find(dims[a]) for a in axes if a < len(dims) and g.size[dims[a]] > 1}


@dataclass
class Flow:
    """Which dims the model's weights read (contract) and write (produce), and from what."""

    consumed: set[int]
    produced: set[int]
    # root -> [(param, fan-in roots of that producing use, whether its input depends on the model's inputs)]
    producers: dict[int, list[tuple[str, set[int], bool]]]
    related: set[int]  # roots in a product/sum/multiple relation (heads x head_dim, splits of a fused output)
    readers: dict[int, list[set[int]]]  # root -> fan-out roots of every layer that reads it


def input_dependent(graph: fx.Graph, cap: Capture) -> set[fx.Node]:
    dep = set(cap.user_inputs)
    for n in graph.nodes:
        if n.op == "call_function" and any(a in dep for a in _nodes_in(n.args) + _nodes_in(n.kwargs)):
            dep.add(n)
    return dep


def _nodes_in(x) -> list[fx.Node]:
    if isinstance(x, fx.Node):
        return [x]
    if isinstance(x, (list, tuple)):
        return [n for a in x for n in _nodes_in(a)]
    if isinstance(x, dict):
        return [n for a in x.values() for n in _nodes_in(a)]
    return []


def flow_of(g: DimGraph, param_axes: dict[str, list[int]], dep: set[fx.Node]) -> Flow:
    consumed, produced, producers, readers = set(), set(), {}, {}
    for ph, uses in g.uses.items():
        for u in uses:
            if u.kind not in CONTRACTING_KINDS:
                continue
            fin = _use_roots(g, param_axes, ph, u.fan_in_axes)
            fout = _use_roots(g, param_axes, ph, u.fan_out_axes)
            if u.kind != "embedding":  # an embedding's fan-in is indexed, not read as features
                consumed |= fin
                for r in fin:
                    readers.setdefault(r, []).append(fout)
            produced |= fout
            for r in fout:
                producers.setdefault(r, []).append((ph, fin if u.kind != "embedding" else set(), u.node in dep))
    related = {g.find(d) for _, out, parts in g.relations for d in (out, *parts)}
    changed = True
    while changed:  # the parts of a dim a layer reads are read too (heads x head_dim into o_proj)
        changed = False
        for kind, out, parts in g.relations:
            ro, rparts = g.find(out), {g.find(p) for p in parts}
            if ro in consumed and not rparts <= consumed:
                consumed |= rparts
                changed = True
            if kind == "scale" and rparts & consumed and ro not in consumed:
                consumed.add(ro)
                changed = True
    return Flow(consumed, produced, producers, related, readers)
