"""Per-op dimension rules: how each ATen op relates the dimensions of its inputs and outputs.

Every tensor axis in the captured graph is a *dim*.  A rule says, for one op, which dims are equal (``eq``), which
are products or sums of others (``prod``/``sum``, from reshape, cat, split), which are finite by construction
(``finite``: kernel sizes, class dims indexed by a target), and how a parameter operand is *used* (``use``: which
axes are contracted = fan_in, which survive into the output = fan_out).  Supporting a new op is one function:

    @rule(torch.ops.aten.my_op.default)
    def _my_op(g: DimGraph, node: fx.Node) -> None:
        g.eq_axes(node.args[0], node)            # e.g. shape-preserving

Ops tagged ``pointwise`` by ATen need no rule.  Ops with no rule leave their output dims unconstrained and are
listed in the plan's notes.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.fx as fx

aten = torch.ops.aten

__all__ = ["DimGraph", "Use", "AttentionSite", "RULES", "rule", "VIEW_LIKE"]


@dataclass
class Use:
    """One use of a parameter by an op: ``fan_in_axes`` are contracted with the activation, ``fan_out_axes`` survive."""

    kind: str  # "matmul" | "conv" | "embedding" | "elementwise" | "unknown"
    node: fx.Node
    operand: int  # index of the parameter-derived operand in node.args
    fan_in_axes: tuple[int, ...]
    fan_out_axes: tuple[int, ...]


@dataclass
class AttentionSite:
    node: fx.Node  # the SDPA op, or the q @ k^T matmul
    kind: str  # "sdpa" | "manual"
    head_dim: int  # dim id of q's contracted axis
    heads: int | None  # dim id of q's head axis, if it has one


@dataclass
class DimGraph:
    """Union-find over tensor axes plus the relations the rules add."""

    parent: list[int] = field(default_factory=list)
    size: list[int] = field(default_factory=list)
    node_dims: dict[str, list] = field(default_factory=dict)  # node name -> [dim ids] (or list of lists for tuples)
    relations: list[tuple[str, int, tuple[int, ...]]] = field(default_factory=list)  # (kind, out, parts)
    finite_reasons: dict[int, str] = field(default_factory=dict)
    # node name -> (param placeholder name, axis map: node axis -> param axis or None)
    origin: dict[str, tuple[str, list]] = field(default_factory=dict)
    uses: dict[str, list[Use]] = field(default_factory=dict)  # param placeholder -> uses
    attention: list[AttentionSite] = field(default_factory=list)
    unknown_ops: dict[str, int] = field(default_factory=dict)

    # -- dims -----------------------------------------------------------------------------------------------------
    def new_dim(self, n: int) -> int:
        self.parent.append(len(self.parent))
        self.size.append(int(n))
        return len(self.parent) - 1

    def find(self, d: int) -> int:
        while self.parent[d] != d:
            self.parent[d] = self.parent[self.parent[d]]
            d = self.parent[d]
        return d

    def alloc(self, node: fx.Node) -> None:
        val = node.meta.get("val")
        self.node_dims[node.name] = self._alloc_val(val)

    def _alloc_val(self, val):
        if isinstance(val, torch.Tensor):
            return [self.new_dim(_int(s)) for s in val.shape]
        if isinstance(val, (tuple, list)):
            return [self._alloc_val(v) for v in val]
        return None

    def dims(self, node) -> list[int] | None:
        if not isinstance(node, fx.Node):
            return None
        d = self.node_dims.get(node.name)
        if d and not isinstance(d[0], int):  # a tuple-valued node: use node_dims for its parts
            return None
        return d

    # -- relations ------------------------------------------------------------------------------------------------
    def eq(self, a: int, b: int) -> None:
        """Equal dims (size-1 axes are broadcast, never unified with a larger dim)."""
        if self.size[a] != self.size[b] or self.size[a] == 1:
            return
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def eq_axes(self, a: fx.Node, b: fx.Node, axes: Sequence[tuple[int, int]] | None = None) -> None:
        da, db = self.dims(a), self.dims(b)
        if da is None or db is None:
            return
        if axes is None:
            if len(da) != len(db):
                return
            axes = [(i, i) for i in range(len(da))]
        for i, j in axes:
            self.eq(da[i], db[j])

    def broadcast(self, out: fx.Node, *ins) -> None:
        """Right-aligned broadcasting: every non-1 input axis equals the output axis it lands on."""
        do = self.dims(out)
        if do is None:
            return
        for x in ins:
            dx = self.dims(x)
            if dx is None:
                continue
            off = len(do) - len(dx)
            for i, d in enumerate(dx):
                if 0 <= off + i < len(do):
                    self.eq(d, do[off + i])

    def prod(self, out: Sequence[int], parts: Sequence[int]) -> None:
        out = [d for d in out if self.size[d] != 1]
        parts = [d for d in parts if self.size[d] != 1]
        if len(out) == 1 and len(parts) == 1:
            self.eq(out[0], parts[0])
        elif len(out) == 1 and parts:
            self.relations.append(("prod", out[0], tuple(parts)))
        elif len(parts) == 1 and out:
            self.relations.append(("prod", parts[0], tuple(out)))
        # many-to-many regroupings (rare) carry no usable relation

    def sum(self, out: int, parts: Sequence[int]) -> None:
        parts = [d for d in parts if self.size[d] != 0]
        if len(parts) == 1:
            self.eq(out, parts[0])
        elif parts:
            self.relations.append(("sum", out, tuple(parts)))

    def finite(self, d: int, reason: str) -> None:
        if self.size[d] != 1:
            self.finite_reasons.setdefault(d, reason)

    # -- parameter uses -------------------------------------------------------------------------------------------
    def use(self, node: fx.Node, operand: int, kind: str, fan_in: Sequence[int], fan_out: Sequence[int]) -> None:
        """Record that ``node.args[operand]`` (if parameter-derived) is used with these (operand-axis) fans."""
        arg = node.args[operand] if operand < len(node.args) else None
        if not isinstance(arg, fx.Node) or arg.name not in self.origin:
            return
        param, axis_map = self.origin[arg.name]
        nd = len(axis_map)
        to_param = lambda axes: tuple(sorted({axis_map[a % nd] for a in axes if axis_map[a % nd] is not None}))
        self.uses.setdefault(param, []).append(Use(kind, node, operand, to_param(fan_in), to_param(fan_out)))

    def derive(self, node: fx.Node, src, axis_map: list) -> None:
        """``node`` is a view/cast of parameter-derived ``src``; ``axis_map[i]`` is the src axis of node axis i."""
        if isinstance(src, fx.Node) and src.name in self.origin:
            param, src_map = self.origin[src.name]
            self.origin[node.name] = (param, [None if a is None else src_map[a] for a in axis_map])

    def is_param_derived(self, x) -> bool:
        return isinstance(x, fx.Node) and x.name in self.origin


def _int(s) -> int:
    try:
        return int(s)
    except Exception:  # noqa: BLE001 - unbacked symbolic sizes: treat as an unknown size
        return -1


RuleFn = Callable[[DimGraph, fx.Node], None]
RULES: dict = {}


def rule(*ops) -> Callable[[RuleFn], RuleFn]:
    def register(fn: RuleFn) -> RuleFn:
        for op in ops:
            RULES[op] = fn
        return fn

    return register


def _ndim(g: DimGraph, x) -> int:
    d = g.dims(x)
    return len(d) if d is not None else 0


def _norm_axis(a: int, n: int) -> int:
    return a % n if n else 0


# ---------------------------------------------------------------------------------------------------------------------
# Elementwise and shape-preserving ops


def pointwise(g: DimGraph, node: fx.Node) -> None:
    tensors = [a for a in node.args if isinstance(a, fx.Node)] + [
        v for v in node.kwargs.values() if isinstance(v, fx.Node)
    ]
    g.broadcast(node, *tensors)
    for i, a in enumerate(node.args):
        if g.is_param_derived(a):
            nd = _ndim(g, a)
            g.use(node, i, "elementwise", (), tuple(range(nd)))


@rule(
    aten.dropout.default, aten.native_dropout.default, aten.clone.default, aten.contiguous.default,
    aten.alias.default, aten.detach.default, aten.to.dtype, aten.to.dtype_layout, aten.to.device, aten.to.other,
    aten._to_copy.default, aten.type_as.default, aten.lift_fresh_copy.default, aten.tril.default, aten.triu.default,
    aten.cumsum.default, aten.softmax.int, aten._softmax.default, aten.log_softmax.int, aten._log_softmax.default,
    aten.ones_like.default, aten.zeros_like.default, aten.full_like.default, aten.empty_like.default,
    aten.rand_like.default, aten.randn_like.default, aten.flip.default, aten.roll.default,
)
def _same_shape(g: DimGraph, node: fx.Node) -> None:
    src = node.args[0]
    out = g.node_dims.get(node.name)
    if out and not isinstance(out[0], int):  # native_dropout returns (out, mask)
        for o in out:
            if isinstance(o, list):
                for a, b in zip(g.dims(src) or [], o):
                    g.eq(a, b)
        return
    g.eq_axes(src, node)
    if node.target in _CAST_LIKE:
        g.derive(node, src, list(range(_ndim(g, node))))
    elif g.is_param_derived(src):
        g.use(node, 0, "elementwise", (), tuple(range(_ndim(g, src))))


_CAST_LIKE = {
    aten.clone.default, aten.contiguous.default, aten.alias.default, aten.detach.default, aten.to.dtype,
    aten.to.dtype_layout, aten.to.device, aten.to.other, aten._to_copy.default, aten.type_as.default,
    aten.lift_fresh_copy.default,
}


@rule(aten.masked_fill.Scalar, aten.masked_fill.Tensor, aten.where.self, aten.where.ScalarSelf, aten.where.ScalarOther)
def _masked(g: DimGraph, node: fx.Node) -> None:
    pointwise(g, node)


@rule(aten.__and__.Tensor, aten.__or__.Tensor, aten.__xor__.Tensor, aten.logical_and.default,
      aten.logical_or.default)
def _logical(g: DimGraph, node: fx.Node) -> None:
    pointwise(g, node)


@rule(aten.diff.default)
def _diff(g: DimGraph, node: fx.Node) -> None:
    g.eq_axes(node.args[0], node)  # the differenced axis shrinks by one, so eq() skips it


@rule(aten.gather.default)
def _gather(g: DimGraph, node: fx.Node) -> None:
    g.eq_axes(node.args[2], node)  # output has the index's shape


@rule(aten._assert_tensor_metadata.default, aten._assert_scalar.default, aten.sym_constrain_range_for_size.default)
def _no_op(g: DimGraph, node: fx.Node) -> None:
    pass


# ---------------------------------------------------------------------------------------------------------------------
# Views and regroupings


def _reshape_groups(a: Sequence[int], b: Sequence[int]) -> list[tuple[list[int], list[int]]]:
    """Pair up axes of two shapes with equal products (contiguous groups), skipping size-1 axes."""
    groups, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        gi, gj, pa, pb = [], [], 1, 1
        while i < len(a) and a[i] == 1:
            i += 1
        while j < len(b) and b[j] == 1:
            j += 1
        if i >= len(a) or j >= len(b):
            break
        gi.append(i); pa *= a[i]; i += 1  # noqa: E702
        gj.append(j); pb *= b[j]; j += 1  # noqa: E702
        while pa != pb:
            if pa < pb and i < len(a):
                gi.append(i); pa *= a[i]; i += 1  # noqa: E702
            elif pb < pa and j < len(b):
                gj.append(j); pb *= b[j]; j += 1  # noqa: E702
            else:
                return groups
        groups.append((gi, gj))
    return groups


@rule(aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.flatten.using_ints,
      aten.unflatten.int, aten.view.dtype if hasattr(aten.view, "dtype") else aten.view.default,
      aten.squeeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.unsqueeze.default)
def _reshape(g: DimGraph, node: fx.Node) -> None:
    src = node.args[0]
    di, do = g.dims(src), g.dims(node)
    if di is None or do is None:
        return
    si, so = [g.size[d] for d in di], [g.size[d] for d in do]
    axis_map: list = [None] * len(do)
    for gi, gj in _reshape_groups(si, so):
        if len(gi) == 1 and len(gj) == 1:
            g.eq(di[gi[0]], do[gj[0]])
            axis_map[gj[0]] = gi[0]
        else:
            g.prod([do[j] for j in gj], [di[i] for i in gi])
    g.derive(node, src, axis_map)


@rule(aten.permute.default, aten.transpose.int, aten.t.default, aten.swapaxes.default if hasattr(aten, "swapaxes") else aten.t.default)
def _permute(g: DimGraph, node: fx.Node) -> None:
    src = node.args[0]
    n = _ndim(g, src)
    if node.target == aten.permute.default:
        perm = [_norm_axis(p, n) for p in node.args[1]]
    else:
        perm = list(range(n))
        if n >= 2:
            a, b = (node.args[1], node.args[2]) if len(node.args) > 2 else (0, 1)
            a, b = _norm_axis(a, n), _norm_axis(b, n)
            perm[a], perm[b] = perm[b], perm[a]
    g.eq_axes(src, node, [(p, i) for i, p in enumerate(perm)])
    g.derive(node, src, perm)


@rule(aten.expand.default, aten.expand_as.default, aten.repeat.default)
def _expand(g: DimGraph, node: fx.Node) -> None:
    src = node.args[0]
    di, do = g.dims(src), g.dims(node)
    if di is None or do is None:
        return
    off = len(do) - len(di)
    axis_map: list = [None] * len(do)
    for i, d in enumerate(di):
        if node.target == aten.repeat.default and g.size[d] != g.size[do[off + i]]:
            continue
        g.eq(d, do[off + i])
        axis_map[off + i] = i
    g.derive(node, src, axis_map)


@rule(aten.slice.Tensor, aten.narrow.default)
def _slice(g: DimGraph, node: fx.Node) -> None:
    src = node.args[0]
    di, do = g.dims(src), g.dims(node)
    if di is None or do is None:
        return
    for i, (a, b) in enumerate(zip(di, do)):
        g.eq(a, b)  # only unifies axes the slice leaves whole (eq ignores different sizes)
    g.derive(node, src, list(range(len(do))))


@rule(aten.select.int)
def _select(g: DimGraph, node: fx.Node) -> None:
    src, axis = node.args[0], node.args[1]
    di, do = g.dims(src), g.dims(node)
    if di is None or do is None:
        return
    axis = _norm_axis(axis, len(di))
    keep = [i for i in range(len(di)) if i != axis]
    g.eq_axes(src, node, [(i, j) for j, i in enumerate(keep)])
    g.derive(node, src, keep)


@rule(aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default, aten.unbind.int, aten.split.sizes)
def _split(g: DimGraph, node: fx.Node) -> None:
    src = node.args[0]
    di, outs = g.dims(src), g.node_dims.get(node.name)
    if di is None or not outs:
        return
    axis = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    if node.target == aten.unbind.int:
        axis = node.args[1] if len(node.args) > 1 else 0
    axis = _norm_axis(axis, len(di))
    for o in outs:
        if node.target == aten.unbind.int:
            for j, i in enumerate(k for k in range(len(di)) if k != axis):
                g.eq(di[i], o[j])
            continue
        for i in range(len(di)):
            if i != axis:
                g.eq(di[i], o[i])
    if node.target != aten.unbind.int:
        g.sum(di[axis], [o[axis] for o in outs])


@rule(operator.getitem)
def _getitem(g: DimGraph, node: fx.Node) -> None:
    src, idx = node.args
    outs = g.node_dims.get(src.name) if isinstance(src, fx.Node) else None
    mine = g.dims(node)
    if not outs or mine is None or not isinstance(idx, int) or idx >= len(outs):
        return
    theirs = outs[idx]
    if isinstance(theirs, list) and len(theirs) == len(mine) and all(isinstance(t, int) for t in theirs):
        for a, b in zip(theirs, mine):
            g.eq(a, b)


@rule(aten.cat.default, aten.concat.default if hasattr(aten, "concat") else aten.cat.default)
def _cat(g: DimGraph, node: fx.Node) -> None:
    parts = [p for p in node.args[0] if isinstance(p, fx.Node)]
    axis = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    do = g.dims(node)
    if do is None:
        return
    axis = _norm_axis(axis, len(do))
    sizes = []
    for i, p in enumerate(node.args[0]):
        dp = g.dims(p)
        if dp is None or len(dp) != len(do):
            continue
        for k in range(len(do)):
            if k != axis:
                g.eq(dp[k], do[k])
        sizes.append(dp[axis])
        if g.is_param_derived(p):  # e.g. a cls token concatenated to the tokens: used like a vector
            param, amap = g.origin[p.name]
            g.uses.setdefault(param, []).append(
                Use("elementwise", node, 0, (), tuple(a for a in amap if a is not None)))
    g.sum(do[axis], sizes)


@rule(aten.stack.default)
def _stack(g: DimGraph, node: fx.Node) -> None:
    axis = node.args[1] if len(node.args) > 1 else 0
    do = g.dims(node)
    if do is None:
        return
    axis = _norm_axis(axis, len(do))
    for p in node.args[0]:
        dp = g.dims(p)
        if dp is not None:
            g.eq_axes(p, node, [(i, i if i < axis else i + 1) for i in range(len(dp))])


# ---------------------------------------------------------------------------------------------------------------------
# Reductions


@rule(aten.sum.dim_IntList, aten.mean.dim, aten.amax.default, aten.amin.default, aten.var.correction, aten.std.correction,
      aten.var.dim, aten.std.dim, aten.linalg_vector_norm.default, aten.norm.ScalarOpt_dim, aten.logsumexp.default,
      aten.argmax.default, aten.max.dim, aten.min.dim, aten.any.dim, aten.all.dim, aten.prod.dim_int)
def _reduce(g: DimGraph, node: fx.Node) -> None:
    src = node.args[0]
    di = g.dims(src)
    outs = g.node_dims.get(node.name)
    if di is None or not outs:
        return
    dims_arg = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if node.target == aten.linalg_vector_norm.default:
        dims_arg = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim")
    if dims_arg is None:
        return
    if isinstance(dims_arg, int):
        dims_arg = [dims_arg]
    red = {_norm_axis(a, len(di)) for a in dims_arg}
    keep = [i for i in range(len(di)) if i not in red]
    targets = outs if not isinstance(outs[0], int) else [outs]
    for o in targets:
        if not isinstance(o, list):
            continue
        if len(o) == len(di):
            pairs = [(i, i) for i in keep]
        else:
            pairs = [(i, j) for j, i in enumerate(keep)]
        for i, j in pairs:
            if j < len(o):
                g.eq(di[i], o[j])


# ---------------------------------------------------------------------------------------------------------------------
# Contractions: these define fan_in / fan_out


@rule(aten.linear.default)
def _linear(g: DimGraph, node: fx.Node) -> None:
    x, w = node.args[0], node.args[1]
    b = node.args[2] if len(node.args) > 2 else None
    dx, dw, do = g.dims(x), g.dims(w), g.dims(node)
    if dx is None or dw is None or do is None:
        return
    g.eq(dx[-1], dw[-1])
    if len(dw) == 2:
        g.eq(do[-1], dw[0])
    for i in range(len(dx) - 1):
        g.eq(dx[i], do[i])
    g.use(node, 1, "matmul", (1,), (0,))
    if isinstance(b, fx.Node):
        g.broadcast(node, b)
        g.use(node, 2, "elementwise", (), (0,))


def _matmul_dims(g: DimGraph, node: fx.Node, a, b, out) -> None:
    da, db, do = g.dims(a), g.dims(b), g.dims(out)
    if da is None or db is None or do is None:
        return
    if len(da) == 1 or len(db) == 1:
        g.eq(da[-1], db[0] if len(db) == 1 else db[-2])
        return
    g.eq(da[-1], db[-2])
    g.eq(da[-2], do[-2])
    g.eq(db[-1], do[-1])
    # batch dims broadcast
    for x in (da, db):
        for i in range(len(x) - 2):
            k = len(do) - len(x) + i
            if 0 <= k < len(do) - 2:
                g.eq(x[i], do[k])


def _record_matmul(g: DimGraph, node: fx.Node, ia: int, ib: int) -> None:
    a, b = node.args[ia], node.args[ib]
    if g.is_param_derived(b):
        g.use(node, ib, "matmul", (-2,), (-1,))
    if g.is_param_derived(a):
        g.use(node, ia, "matmul", (-1,), (-2,))
    if not g.is_param_derived(a) and not g.is_param_derived(b):
        _maybe_manual_attention(g, node, a, b)


@rule(aten.mm.default, aten.bmm.default, aten.matmul.default)
def _mm(g: DimGraph, node: fx.Node) -> None:
    _matmul_dims(g, node, node.args[0], node.args[1], node)
    _record_matmul(g, node, 0, 1)


@rule(aten.addmm.default, aten.baddbmm.default, aten.addbmm.default)
def _addmm(g: DimGraph, node: fx.Node) -> None:
    bias, a, b = node.args[:3]
    _matmul_dims(g, node, a, b, node)
    g.broadcast(node, bias)
    _record_matmul(g, node, 1, 2)
    if g.is_param_derived(bias):
        g.use(node, 0, "elementwise", (), tuple(range(_ndim(g, bias))))


@rule(aten.einsum.default)
def _einsum(g: DimGraph, node: fx.Node) -> None:
    eq, operands = node.args[0], node.args[1]
    lhs, _, out = eq.replace(" ", "").partition("->")
    specs = lhs.split(",")
    if "..." in eq or len(specs) != len(operands):
        g.unknown_ops["einsum with ellipsis"] = g.unknown_ops.get("einsum with ellipsis", 0) + 1
        return
    letter_dims: dict[str, int] = {}
    do = g.dims(node)
    for letter, d in zip(out, do or []):
        letter_dims[letter] = d
    for spec, op in zip(specs, operands):
        d = g.dims(op)
        if d is None:
            continue
        for letter, di in zip(spec, d):
            if letter in letter_dims:
                g.eq(letter_dims[letter], di)
            else:
                letter_dims[letter] = di
    for k, (spec, op) in enumerate(zip(specs, operands)):
        if g.is_param_derived(op):
            others = "".join(s for j, s in enumerate(specs) if j != k)
            fan_in = tuple(i for i, c in enumerate(spec) if c in others and c not in out)
            fan_out = tuple(i for i, c in enumerate(spec) if c in out)
            param, amap = g.origin[op.name]
            to_p = lambda axes: tuple(sorted({amap[a] for a in axes if amap[a] is not None}))
            g.uses.setdefault(param, []).append(Use("matmul", node, 1, to_p(fan_in), to_p(fan_out)))


@rule(aten.conv1d.default, aten.conv2d.default, aten.conv3d.default, aten.convolution.default,
      aten.conv_transpose1d.default, aten.conv_transpose2d.input, aten.conv_transpose3d.input,
      aten.conv1d.padding, aten.conv2d.padding, aten.conv3d.padding)
def _conv(g: DimGraph, node: fx.Node) -> None:
    x, w = node.args[0], node.args[1]
    b = node.args[2] if len(node.args) > 2 else None
    dx, dw, do = g.dims(x), g.dims(w), g.dims(node)
    if dx is None or dw is None or do is None:
        return
    transposed = node.target in (aten.conv_transpose1d.default, aten.conv_transpose2d.input,
                                 aten.conv_transpose3d.input) or (
        node.target == aten.convolution.default and bool(node.args[6]))
    groups = node.args[-1] if isinstance(node.args[-1], int) and not transposed else 1
    batched = len(dx) == len(dw)
    c_axis = 1 if batched else 0
    in_ax, out_ax = (0, 1) if transposed else (1, 0)
    if groups == 1:
        g.eq(dx[c_axis], dw[in_ax])
    else:
        g.prod([dx[c_axis]], [dw[in_ax]])  # in_channels = groups * (in/groups): a finite multiple
    g.eq(do[c_axis], dw[out_ax])
    if batched:
        g.eq(dx[0], do[0])
    for k in range(2, len(dw)):
        g.finite(dw[k], "kernel size")
    g.use(node, 1, "conv", (in_ax, *range(2, len(dw))), (out_ax,))
    if isinstance(b, fx.Node):
        g.eq(g.dims(b)[0], do[c_axis])
        g.use(node, 2, "elementwise", (), (0,))


@rule(aten.embedding.default)
def _embedding(g: DimGraph, node: fx.Node) -> None:
    w, idx = node.args[0], node.args[1]
    dw, di, do = g.dims(w), g.dims(idx), g.dims(node)
    if dw is None or do is None:
        return
    g.eq(dw[-1], do[-1])
    for a, b in zip(di or [], do[:-1]):
        g.eq(a, b)
    g.finite(dw[0], "indexed by integer inputs (vocabulary / positions)")
    g.use(node, 0, "embedding", (0,), (1,))


@rule(aten.index_select.default)
def _index_select(g: DimGraph, node: fx.Node) -> None:
    src, axis, idx = node.args
    di, do = g.dims(src), g.dims(node)
    if di is None or do is None:
        return
    axis = _norm_axis(axis, len(di))
    for i in range(len(di)):
        if i != axis:
            g.eq(di[i], do[i])
    g.finite(di[axis], "indexed by integer inputs")
    if g.is_param_derived(src):
        g.use(node, 0, "embedding", (axis,), tuple(i for i in range(len(di)) if i != axis))


@rule(aten.index.Tensor)
def _index(g: DimGraph, node: fx.Node) -> None:
    src, indices = node.args[0], node.args[1]
    di, do = g.dims(src), g.dims(node)
    if di is None or do is None:
        return
    lead = 0
    while lead < len(indices) and indices[lead] is None:
        lead += 1
    n_idx = sum(1 for t in indices if t is not None)
    if all(t is not None for t in indices[lead:]) and n_idx:
        for i in range(lead):
            g.eq(di[i], do[i])
        for k in range(lead, lead + n_idx):
            g.finite(di[k], "indexed by integer inputs")
        tail = len(di) - (lead + n_idx)
        for t in range(tail):
            g.eq(di[len(di) - 1 - t], do[len(do) - 1 - t])
        if g.is_param_derived(src):
            g.use(node, 0, "embedding", tuple(range(lead, lead + n_idx)),
                  tuple(i for i in range(len(di)) if not lead <= i < lead + n_idx))


# ---------------------------------------------------------------------------------------------------------------------
# Normalisation


@rule(aten.layer_norm.default, aten.native_layer_norm.default, aten.rms_norm.default)
def _layer_norm(g: DimGraph, node: fx.Node) -> None:
    x = node.args[0]
    out = node if g.dims(node) is not None else None
    if out is None:
        outs = g.node_dims.get(node.name)
        if outs:
            for a, b in zip(g.dims(x) or [], outs[0]):
                g.eq(a, b)
    else:
        g.eq_axes(x, node)
    for i in (2, 3):
        p = node.args[i] if len(node.args) > i else None
        if isinstance(p, fx.Node):
            dp, dx = g.dims(p), g.dims(x)
            if dp is not None and dx is not None:
                for k in range(1, len(dp) + 1):
                    g.eq(dp[-k], dx[-k])
            g.use(node, i, "elementwise", (), tuple(range(_ndim(g, p))))


@rule(aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default,
      aten._native_batch_norm_legit_functional.default, aten._native_batch_norm_legit.default,
      aten.native_batch_norm.default, aten.instance_norm.default, aten.group_norm.default,
      aten.native_group_norm.default)
def _batch_norm(g: DimGraph, node: fx.Node) -> None:
    x = node.args[0]
    dx = g.dims(x)
    if dx is None:
        return
    outs = g.node_dims.get(node.name)
    first = outs if outs and isinstance(outs[0], int) else (outs[0] if outs else None)
    if isinstance(first, list):
        for a, b in zip(dx, first):
            g.eq(a, b)
    slots = (2, 3) if node.target in (aten.group_norm.default, aten.native_group_norm.default) else (1, 2, 3, 4)
    for i in slots:
        p = node.args[i] if len(node.args) > i else None
        dp = g.dims(p)
        if dp is not None and len(dp) == 1 and len(dx) > 1:
            g.eq(dp[0], dx[1])
            if g.is_param_derived(p):
                g.use(node, i, "elementwise", (), (0,))


# ---------------------------------------------------------------------------------------------------------------------
# Attention


@rule(aten.scaled_dot_product_attention.default)
def _sdpa(g: DimGraph, node: fx.Node) -> None:
    q, k, v = node.args[:3]
    mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
    dq, dk, dv, do = g.dims(q), g.dims(k), g.dims(v), g.dims(node)
    if None in (dq, dk, dv, do):
        return
    g.eq(dq[-1], dk[-1])
    g.eq(dk[-2], dv[-2])
    g.eq(do[-1], dv[-1])
    for i in range(len(dq) - 1):
        g.eq(dq[i], do[i])
    for i in range(len(dk) - 2):
        g.eq(dk[i], dq[i])
        g.eq(dv[i], dq[i])
    dm = g.dims(mask)
    if dm is not None:  # mask broadcasts to (..., L, S)
        target = dq[:-1] + [dk[-2]]
        off = len(target) - len(dm)
        for i, d in enumerate(dm):
            if 0 <= off + i < len(target):
                g.eq(d, target[off + i])
    heads = dq[-3] if len(dq) >= 3 else None
    g.attention.append(AttentionSite(node, "sdpa", dq[-1], heads))
    g.attention.append(AttentionSite(node, "sdpa-v", dv[-1], dv[-3] if len(dv) >= 3 else None))


_SOFTMAX = {aten.softmax.int, aten._softmax.default, aten._safe_softmax.default if hasattr(aten, "_safe_softmax") else aten.softmax.int}


def _reaches_softmax(node: fx.Node, depth: int = 6) -> bool:
    frontier = [node]
    for _ in range(depth):
        nxt = []
        for n in frontier:
            for u in n.users:
                if u.target in _SOFTMAX:
                    return True
                if u.op == "call_function" and (u.target in _PASS_THROUGH or _is_pointwise(u.target)):
                    nxt.append(u)
        frontier = nxt
    return False


def _from_softmax(node, depth: int = 4) -> bool:
    frontier = [node]
    for _ in range(depth):
        nxt = []
        for n in frontier:
            if not isinstance(n, fx.Node) or n.op != "call_function":
                continue
            if n.target in _SOFTMAX:
                return True
            if n.target in _PASS_THROUGH or _is_pointwise(n.target):
                nxt.extend(a for a in n.args if isinstance(a, fx.Node))
        frontier = nxt
    return False


def _maybe_manual_attention(g: DimGraph, node: fx.Node, a, b) -> None:
    da, db = g.dims(a), g.dims(b)
    if da is None or db is None or len(da) < 3:
        return
    if _reaches_softmax(node):
        g.attention.append(AttentionSite(node, "manual", da[-1], da[-3] if len(da) >= 3 else None))
    elif _from_softmax(a) and len(db) >= 3:
        g.attention.append(AttentionSite(node, "manual-v", db[-1], db[-3] if len(db) >= 3 else None))


_PASS_THROUGH = {aten.view.default, aten.reshape.default, aten.transpose.int, aten.permute.default, aten.dropout.default,
                 aten.contiguous.default, aten.clone.default, aten.masked_fill.Scalar, aten.masked_fill.Tensor,
                 aten.to.dtype, aten._to_copy.default, aten.expand.default}


def _is_pointwise(target) -> bool:
    tags = getattr(target, "tags", ())
    return torch.Tag.pointwise in tags


# ---------------------------------------------------------------------------------------------------------------------
# Losses and pooling


@rule(aten.cross_entropy_loss.default, aten.nll_loss.default, aten.nll_loss_nd.default, aten.nll_loss_forward.default,
      aten.nll_loss2d_forward.default)
def _nll(g: DimGraph, node: fx.Node) -> None:
    x, target = node.args[0], node.args[1]
    dx, dt = g.dims(x), g.dims(target)
    if dx is None:
        return
    c_axis = 1 if len(dx) > 1 else 0
    g.finite(dx[c_axis], "class dim indexed by the loss target")
    if dt is not None and dt and not (len(dt) == len(dx)):  # class-index targets
        rest = [d for i, d in enumerate(dx) if i != c_axis]
        for a, b in zip(rest, dt):
            g.eq(a, b)
    elif dt is not None:  # probability targets
        for a, b in zip(dx, dt):
            g.eq(a, b)


@rule(aten.max_pool1d.default, aten.max_pool2d.default, aten.max_pool3d.default, aten.avg_pool1d.default,
      aten.avg_pool2d.default, aten.avg_pool3d.default, aten.adaptive_avg_pool1d.default,
      aten.adaptive_avg_pool2d.default, aten.adaptive_avg_pool3d.default, aten.adaptive_max_pool2d.default,
      aten.max_pool2d_with_indices.default, aten.upsample_nearest2d.vec, aten.upsample_bilinear2d.vec,
      aten.pad.default, aten.constant_pad_nd.default)
def _pool(g: DimGraph, node: fx.Node) -> None:
    x = node.args[0]
    dx = g.dims(x)
    outs = g.node_dims.get(node.name)
    if dx is None or not outs:
        return
    do = outs if isinstance(outs[0], int) else outs[0]
    spatial = 1 if node.target not in (aten.pad.default, aten.constant_pad_nd.default) else len(node.args[1]) // 2
    n_sp = {aten.max_pool1d.default: 1, aten.avg_pool1d.default: 1, aten.adaptive_avg_pool1d.default: 1,
            aten.max_pool3d.default: 3, aten.avg_pool3d.default: 3, aten.adaptive_avg_pool3d.default: 3}.get(
        node.target, 2 if spatial == 1 else spatial)
    for i in range(len(dx) - n_sp):
        g.eq(dx[i], do[i])


# ---------------------------------------------------------------------------------------------------------------------
# Factories: new tensors whose dims are constrained only by later use.

for _op in (aten.arange.default, aten.arange.start, aten.arange.start_step, aten.ones.default, aten.zeros.default,
            aten.full.default, aten.empty.memory_format, aten.new_ones.default, aten.new_zeros.default,
            aten.new_full.default, aten.new_empty.default, aten.scalar_tensor.default, aten.randn.default,
            aten.rand.default, aten.eye.default, aten.lift_fresh_copy.default, aten.sym_size.int):
    RULES.setdefault(_op, _no_op)

VIEW_LIKE = {aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.flatten.using_ints,
             aten.unflatten.int, aten.squeeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.unsqueeze.default,
             aten.permute.default, aten.transpose.int, aten.t.default, aten.expand.default, aten.contiguous.default,
             aten.clone.default, aten.alias.default, aten.detach.default, aten.to.dtype, aten.to.dtype_layout,
             aten._to_copy.default, aten.type_as.default, aten.dropout.default}


def apply_rule(g: DimGraph, node: fx.Node, recurse: Callable[[fx.Node], None]) -> None:
    fn = RULES.get(node.target)
    if fn is not None:
        fn(g, node)
    elif _is_pointwise(node.target):
        pointwise(g, node)
    elif node.target is not None and "wrap_with" in str(node.target) or (
        isinstance(node.target, torch._ops.HigherOrderOperator)):
        recurse(node)
    else:
        key = str(node.target)
        g.unknown_ops[key] = g.unknown_ops.get(key, 0) + 1
        for i, a in enumerate(node.args):
            if g.is_param_derived(a):
                g.use(node, i, "unknown", (), ())
