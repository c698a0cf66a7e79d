"""Questions about fx nodes that the site finders, the fold and the branch finder share: which module a node belongs
to, whether it is a module's output, which nodes depend on parameters, what a chain of views starts from."""
from __future__ import annotations

import torch.fx as fx

from .rules import table as ops

__all__ = ["module_of", "param_dependent_nodes"]


def module_of(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    # export records FQNs; strip any "L['self']." style prefixes defensively
    return path.replace("L['self'].", "").replace("L__self__.", "")


def _inside(child: str, parent: str) -> bool:
    return parent == "" or child == parent or child.startswith(parent + ".")


def _is_module_output(node: fx.Node, mod: str) -> bool:
    return mod != "" and all(not _inside(module_of(u), mod) for u in node.users if u.op != "output")


def _flat_args(args):
    for a in args:
        if isinstance(a, (list, tuple)):
            yield from _flat_args(a)
        else:
            yield a


def param_dependent_nodes(graph: fx.Graph, param_placeholders: set[str]) -> set[fx.Node]:
    """The nodes computed from the parameters (whose placeholders are named)."""
    dep = {n for n in graph.nodes if n.op == "placeholder" and n.name in param_placeholders}
    for n in graph.nodes:
        if n.op == "call_function" and any(isinstance(a, fx.Node) and a in dep for a in _flat_args(n.args)):
            dep.add(n)
    return dep


def _walk_views_back(node: fx.Node) -> fx.Node:
    while node.op == "call_function" and ops.is_view_like(node.target) and len(node.users) == 1:
        src = node.args[0]
        if not isinstance(src, fx.Node):
            break
        node = src
    return node
