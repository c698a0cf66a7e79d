"""Where in the module tree a forward multiplier can be applied.

The rewrite acts at module boundaries (a hook scaling a module's first input or its output), so that the user's own
forward keeps running unchanged.  These graph queries find, for a readout matmul or an attention query, the module
boundary whose tensor carries exactly that operand.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx as fx

from .shape_rules import VIEW_LIKE, Use

aten = torch.ops.aten

__all__ = ["Site", "readout_site", "query_site", "module_of"]


@dataclass(frozen=True)
class Site:
    module: str  # path as in named_modules()
    where: str  # "input": the module's first positional argument; "output": its returned tensor
    channels: tuple[int, int, int] | None = None  # (start, stop, total) on the last axis, for fused projections


def module_of(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return _clean(path)


def _clean(path: str) -> str:
    # export records FQNs; strip any "L['self']." style prefixes defensively
    return path.replace("L['self'].", "").replace("L__self__.", "")


def _inside(child: str, parent: str) -> bool:
    return parent == "" or child == parent or child.startswith(parent + ".")


def _is_module_output(node: fx.Node, mod: str) -> bool:
    return all(not _inside(module_of(u), mod) for u in node.users if u.op != "output") and mod != ""


def _activation_operand(use: Use) -> fx.Node | None:
    node, k = use.node, use.operand
    t = node.target
    if t in (aten.linear.default, aten.conv1d.default, aten.conv2d.default, aten.conv3d.default,
             aten.convolution.default):
        idx = 0
    elif t in (aten.addmm.default, aten.baddbmm.default):
        idx = 1 if k == 2 else 2
    elif t in (aten.mm.default, aten.bmm.default, aten.matmul.default):
        idx = 1 - k
    else:
        return None
    a = node.args[idx]
    return a if isinstance(a, fx.Node) else None


def _walk_views_back(node: fx.Node) -> fx.Node:
    while node.op == "call_function" and node.target in VIEW_LIKE and len(node.users) == 1:
        src = node.args[0]
        if not isinstance(src, fx.Node):
            break
        node = src
    return node


def readout_site(use: Use, aliases: list[str], leaf_modules: set[str]) -> Site | None:
    """The boundary carrying the readout's input: the owning leaf module's input, or a child module's output."""
    op = use.node
    mod = module_of(op)
    owners = {a.rpartition(".")[0] for a in aliases}
    if mod in owners and mod in leaf_modules:
        return Site(mod, "input")
    act = _activation_operand(use)
    if act is None:
        return None
    src = _walk_views_back(act)
    src_mod = module_of(src)
    if src_mod != mod and _inside(src_mod, mod) and len(src.users) == 1 and _is_module_output(src, src_mod):
        chain_ok = True
        n = act
        while n is not src:
            if len(n.users) != 1:
                chain_ok = False
            n = n.args[0]
        if chain_ok:
            return Site(src_mod, "output")
    return None


_Q_LINEAR = {aten.mul.Tensor, aten.add.Tensor, aten.sub.Tensor, aten.neg.default, aten.cat.default,
             aten.slice.Tensor, aten.div.Tensor}


def query_site(attn_node: fx.Node, param_dependent: set[str]) -> Site | None:
    """The module output that the attention query is a linear function of (projection, or q-norm)."""
    q = attn_node.args[0]
    if not isinstance(q, fx.Node):
        return None
    attn_mod = module_of(attn_node)
    sources: set[tuple[str, tuple | None]] = set()
    stack, seen = [q], set()
    while stack:
        n = stack.pop()
        if n.name in seen:
            continue
        seen.add(n.name)
        nm = module_of(n)
        if nm != attn_mod and _inside(nm, attn_mod) and _is_module_output(n, nm):
            sources.add((nm, None))
            continue
        if n.op != "call_function":
            return None
        if n.target is operator.getitem and isinstance(n.args[0], fx.Node) and n.args[0].target in (
                aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default):
            split, idx = n.args[0], n.args[1]
            src = split.args[0]
            sm = module_of(src)
            if sm != attn_mod and _inside(sm, attn_mod) and _is_module_output(src, sm):
                total = src.meta["val"].shape[-1]
                dim = split.args[2] if len(split.args) > 2 else split.kwargs.get("dim", 0)
                if dim % src.meta["val"].dim() != src.meta["val"].dim() - 1:
                    return None
                sizes = [o.shape[-1] for o in split.meta["val"]]
                start = sum(sizes[:idx])
                sources.add((sm, (start, start + sizes[idx], int(total))))
                continue
            stack.append(src)
            continue
        if n.target in VIEW_LIKE or n.target in _Q_LINEAR:
            args = [a for a in _flat_args(n.args) if isinstance(a, fx.Node) and a.name in param_dependent]
            if n.target in (aten.mul.Tensor, aten.div.Tensor) and len(args) != 1:
                return None
            stack.extend(args)
            continue
        return None
    if len(sources) != 1:
        return None
    mod, chans = sources.pop()
    return Site(mod, "output", chans)


def _flat_args(args):
    for a in args:
        if isinstance(a, (list, tuple)):
            yield from _flat_args(a)
        else:
            yield a


def param_dependent_nodes(graph: fx.Graph, param_placeholders: set[str]) -> set[str]:
    dep: set[str] = set(param_placeholders)
    for n in graph.nodes:
        if n.op == "call_function" and any(isinstance(a, fx.Node) and a.name in dep for a in _flat_args(n.args)):
            dep.add(n.name)
    return dep
