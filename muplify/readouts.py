"""Stage 3's reading of output-like weights: which are the model's readout and which are routers (a weight whose
outputs choose among experts by top-k / argmax, or weight the experts' outputs by a softmax over them: output-like,
but ``output_mult`` is the readout's alone)."""
from __future__ import annotations

import math
import operator

import torch.fx as fx

from .rules import SelectionKind
from .rules import table as ops

__all__ = ["routing_selection", "single_unit_reaches_output", "soft_routing"]


def _numel(node) -> int | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    shape = getattr(val, "shape", None)
    return None if shape is None else math.prod(int(s) for s in shape)


def single_unit_reaches_output(node: fx.Node, depth: int = 24) -> bool:
    """Whether a layer output with a single unit (``nn.Linear(w, 1)``, ``Conv1d(w, 1, 1)``) reaches the model's
    output without being broadcast against a larger activation first (a scalar gate multiplying a hidden state is
    not a readout; a value head squeezed, biased, squashed or fed to a loss is)."""
    size = _numel(node)
    frontier, seen = [node], set()
    for _ in range(depth):
        nxt = []
        for n in frontier:
            for u in n.users:
                if u.op == "output":
                    return True
                if u in seen:
                    continue
                seen.add(u)
                m = _numel(u)
                if u.op == "call_function" and (size is None or m is None or m <= size or
                                                 (u.target is operator.getitem)):
                    nxt.append(u)
        frontier = nxt
    return False


def routing_selection(wa, dims: list[int], axes) -> str | None:
    """Why the fan-out axis of an output-like use is an expert choice: selected along by top-k / argmax / sort
    (the op table's selection rules), which is what makes a router.  Integer indexing (``x[..., 0]``) is not."""
    for a in axes:
        sel = wa.selection(dims[a]) if a < len(dims) else None
        if sel is not None and sel.kind is SelectionKind.RANKED:
            return sel.why
    return None


def _downstream(node: fx.Node, depth: int):
    """Ops that read ``node``'s result, at most ``depth`` ops on (nearest first)."""
    seen, frontier = {node}, [node]
    for _ in range(depth):
        nxt = []
        for n in frontier:
            for u in n.users:
                if u not in seen and u.op == "call_function":
                    seen.add(u)
                    nxt.append(u)
                    yield u
        frontier = nxt


def _upstream(node, match, depth: int) -> bool:
    """Whether an op ``match``-ing produces ``node`` or one of its inputs, at most ``depth`` ops back (a list of
    tensors, ``torch.stack``'s, is followed)."""
    seen, frontier = set(), [node]
    for _ in range(depth + 1):
        nxt = []
        for n in frontier:
            if not isinstance(n, fx.Node) or n in seen or n.op != "call_function":
                continue
            seen.add(n)
            if match(n):
                return True
            nxt.extend(n.all_input_nodes)
        frontier = nxt
    return False


def soft_routing(wa, node: fx.Node, dims: list[int], axes) -> str | None:
    """Why an output-like use's fan-out axis is a soft expert choice: a softmax over it whose probabilities multiply
    the outputs of layers (the experts) and are summed over that axis -- by a sum reduction, a contraction with the
    stacked expert outputs, or expert by expert with adds.  A readout's softmax (class probabilities reaching the
    model's output, or weighing targets that come from the inputs) weighs no layer outputs: not a router."""
    g = wa.dim_graph
    roots = {g.find(dims[a]) for a in axes if a < len(dims)}
    if len(roots) != 1:
        return None
    (root,) = roots

    def carries(n) -> bool:
        d = g.dims(n)
        return d is not None and any(g.find(x) == root for x in d)

    def softmax_axis_is_root(n) -> bool:
        d, axis = g.dims(n.args[0]) if n.args else None, n.args[1] if len(n.args) > 1 else -1
        return isinstance(axis, int) and bool(d) and -len(d) <= axis < len(d) and g.find(d[axis]) == root

    sm = next((n for n in _downstream(node, 6) if ops.is_softmax(n.target) and softmax_axis_is_root(n)), None)
    if sm is None:
        return None
    from_gate = lambda n: _upstream(n, lambda m: m is sm, 8)  # noqa: E731
    from_layers = lambda n: _upstream(n, lambda m: ops.layer_slots(m.target) is not None, 8)  # noqa: E731
    for n in _downstream(sm, 8):
        ins = [a for a in n.all_input_nodes if g.dims(a) is not None]
        gate = [a for a in ins if from_gate(a)]
        experts = [a for a in ins if a not in gate and from_layers(a)]
        if not gate or not experts:
            continue
        if carries(gate[0]) and any(carries(a) for a in experts) and not carries(n):
            return f"contracted with the expert outputs by {_opname(n)}"
        if not ops.is_scaling(n.target):
            continue
        for m in _downstream(n, 4):
            if ops.is_sum_reduction(m.target) and carries(m.args[0]) and not carries(m):
                return "multiplied with the expert outputs and summed over the expert axis"
            if ops.is_add(m.target) and all(from_gate(a) and from_layers(a) for a in m.all_input_nodes):
                return "multiplied with each expert's output and the products added up"
    return None


def _opname(n: fx.Node) -> str:
    return str(n.target).split(".")[1] if str(n.target).startswith("aten.") else str(n.target)
