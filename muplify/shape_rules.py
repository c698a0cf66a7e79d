"""Per-op dimension rules: how each ATen op relates the dimensions of its inputs and outputs.

Every tensor axis in the captured graph is a *dim*.  A rule says, for one op, which dims are equal (``eq``), which
are products or sums of others (``prod``/``sum``, from reshape, cat, split) or fixed multiples (``scale``: an RNN's
gate axis, a conv's output positions), which are finite by construction (``finite``: kernel sizes, axes indexed,
counted or written by integers, the stack axis of a weight used as independent matrices), which are merely
*selected* along (``selected``: topk/sort/argmax; finite only if no layer reads them), and how a parameter operand is
*used* (``use``: which axes are contracted = fan_in, which survive into the output = fan_out).  A parameter that an op
reads as data rather than as a weight (a learned table fed to a norm) gets an elementwise use with detail "data";
views of a parameter (transposes, slices, ``W[e]``, weight norm's direction, cat/stack of parameters) carry its origin
so that the op using the view records the use.  Supporting a new op is one function:

    @rule(torch.ops.aten.my_op.default)
    def _my_op(g: DimGraph, node: fx.Node) -> None:
        g.eq_axes(node.args[0], node)            # e.g. shape-preserving

Ops tagged ``pointwise`` by ATen need no rule; an in-place op uses its out-of-place op's rule; a custom op can be
registered by its name (``RULES["ns.op.default"] = fn``).  Ops with no rule leave their output dims unconstrained,
are listed in the plan's notes, and a parameter used only by them is a marked guess.
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
    # what the op is, when the kind alone does not say it: "data" (a parameter fed to an op as an activation),
    # "stack" (one matrix of a weight stack), "rnn", "grouped_mm", "weight_norm", "grouped_conv", ...
    detail: str = ""
    groups: int = 1  # conv groups


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
    # dims an op selects along (topk, sort, argmax): finite when nothing downstream reads them as features
    selected: dict[int, str] = field(default_factory=dict)
    # node name -> further (param, axis map) pairs, for a tensor stacked/concatenated from several parameters
    more_origins: dict[str, list] = field(default_factory=dict)
    # grouped convs: (use, per-group input-channel dim, input-channel dim of the activation, groups)
    grouped_convs: list = field(default_factory=list)
    item_origins: dict[tuple[str, int], list] = field(default_factory=dict)  # (tuple node, index) -> origins
    slices: dict[int, int] = field(default_factory=dict)  # dim of a slice's output -> the sliced dim
    # (node, dim) contracted between two activations outside attention (an SSM state, a contrastive embedding)
    act_contractions: list = field(default_factory=list)
    created: set[int] = field(default_factory=set)  # axes of tensors the forward creates (arange, zeros, literals)

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

    def scale(self, out: int, part: int) -> None:
        """``out`` is a fixed multiple (or an affine function) of ``part``: both scale with width or neither does
        (an RNN's 4*hidden gate axis, a conv output's spatial axis and its input's)."""
        if self.size[out] == self.size[part]:
            self.eq(out, part)
        elif self.size[out] > 1 and self.size[part] > 1:
            self.relations.append(("scale", out, (part,)))

    def finite(self, d: int, reason: str) -> None:
        if self.size[d] != 1:
            self.finite_reasons.setdefault(d, reason)

    # -- parameter uses -------------------------------------------------------------------------------------------
    def use(self, node: fx.Node, operand: int, kind: str, fan_in: Sequence[int], fan_out: Sequence[int],
            detail: str = "", groups: int = 1, arg=None) -> list[Use]:
        """Record that ``node.args[operand]`` (if parameter-derived) is used with these (operand-axis) fans."""
        if arg is None:
            arg = node.args[operand] if operand < len(node.args) else None
        out = []
        for param, axis_map in self.origins(arg):
            nd = len(axis_map)
            to_param = lambda axes: tuple(sorted({axis_map[a % nd] for a in axes if axis_map[a % nd] is not None}))
            u = Use(kind, node, operand, to_param(fan_in), to_param(fan_out), detail, groups)
            self.uses.setdefault(param, []).append(u)
            out.append(u)
        return out

    def origins(self, x) -> list[tuple[str, list]]:
        """Every (parameter placeholder, axis map) that tensor ``x`` is a view of."""
        if not isinstance(x, fx.Node) or x.name not in self.origin:
            return []
        return [self.origin[x.name], *self.more_origins.get(x.name, [])]

    def derive(self, node: fx.Node, src, axis_map: list) -> None:
        """``node`` is a view/cast of parameter-derived ``src``; ``axis_map[i]`` is the src axis of node axis i."""
        derived = [(param, [None if a is None or a >= len(src_map) else src_map[a] for a in axis_map])
                   for param, src_map in self.origins(src)]
        if derived:
            self.origin[node.name] = derived[0]
            if len(derived) > 1:
                self.more_origins[node.name] = derived[1:]

    def derive_item(self, node: fx.Node, index: int, src, axis_map: list) -> None:
        """Item ``index`` of tuple-valued ``node`` (split, chunk, unbind) is a view of parameter-derived ``src``."""
        for param, src_map in self.origins(src):
            self.item_origins.setdefault((node.name, index), []).append(
                (param, [None if a is None else src_map[a] for a in axis_map]))

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


def _aten_op(name: str):
    """``aten.<packet>.<overload>`` if this torch has it (rules for ops that older versions lack)."""
    packet, _, overload = name.partition(".")
    return getattr(getattr(aten, packet, None), overload or "default", None)


def _ops(*names: str) -> list:
    return [op for op in map(_aten_op, names) if op is not None]


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
    *_ops("cumprod.default", "logcumsumexp.default", "cummax.default", "cummin.default", "_safe_softmax.default",
          "bernoulli.p", "bernoulli.default", "uniform_.default", "normal_.default", "exponential_.default",
          "native_dropout.default", "feature_dropout.default", "alpha_dropout.default", "hardtanh_.default",
          "relu_.default", "silu_.default", "gelu_.default", "sigmoid_.default", "tanh_.default",
          "hardswish.default", "hardsigmoid.default", "hardtanh.default", "mish.default", "softplus.default",
          "elu.default", "leaky_relu.default", "celu.default", "selu.default", "log_sigmoid.default",
          "bernoulli.float", "bernoulli_.float", "bernoulli_.Tensor"),
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


@rule(aten.masked_fill.Scalar, aten.masked_fill.Tensor, aten.where.self, aten.where.ScalarSelf, aten.where.ScalarOther,
      *_ops("masked_fill_.Scalar", "masked_fill_.Tensor", "copy_.default", "copy.default", "fill_.Scalar",
            "fill_.Tensor", "zero_.default", "clamp_min_.default", "clamp_max_.default", "greater.Tensor",
            "greater_equal.Tensor", "less.Tensor", "less_equal.Tensor", "not_equal.Tensor"))
def _masked(g: DimGraph, node: fx.Node) -> None:
    pointwise(g, node)


@rule(aten.__and__.Tensor, aten.__or__.Tensor, aten.__xor__.Tensor, aten.logical_and.default,
      aten.logical_or.default, *_ops("floor_divide.default", "floor_divide.Scalar", "remainder.Tensor",
                                     "remainder.Scalar", "bitwise_and.Tensor", "bitwise_or.Tensor"))
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


_REVERSE_ALL = {aten.numpy_T.default} if hasattr(aten, "numpy_T") else set()
_LAST_TWO = set(_ops("mT.default", "mH.default", "adjoint.default"))


@rule(aten.permute.default, aten.transpose.int, aten.t.default,
      *_ops("swapaxes.default", "swapdims.default", "numpy_T.default", "mT.default", "mH.default", "adjoint.default",
            "movedim.int", "movedim.intlist"))
def _permute(g: DimGraph, node: fx.Node) -> None:
    """Transposes of every spelling (``W.T``, ``W.mT``, ``W.t()``, ``permute``, ``movedim``): a view with its axes
    permuted, so a parameter used as ``h @ W.T`` keeps its fans."""
    src = node.args[0]
    n = _ndim(g, src)
    if node.target == aten.permute.default:
        perm = [_norm_axis(p, n) for p in node.args[1]]
    elif node.target in _REVERSE_ALL:
        perm = list(range(n))[::-1]
    elif "movedim" in str(node.target):
        s, d = node.args[1], node.args[2]
        s, d = ([s], [d]) if isinstance(s, int) else (list(s), list(d))
        s, d = [_norm_axis(a, n) for a in s], [_norm_axis(a, n) for a in d]
        rest = iter([a for a in range(n) if a not in s])
        placed = dict(zip(d, s))
        perm = [placed[i] if i in placed else next(rest) for i in range(n)]
    else:
        perm = list(range(n))
        if n >= 2:
            if node.target in _LAST_TWO:
                a, b = n - 2, n - 1
            else:
                a, b = (node.args[1], node.args[2]) if len(node.args) > 2 else (0, 1)
            a, b = _norm_axis(a, n), _norm_axis(b, n)
            perm[a], perm[b] = perm[b], perm[a]
    g.eq_axes(src, node, [(p, i) for i, p in enumerate(perm)])
    g.derive(node, src, perm)


@rule(aten.expand.default, aten.expand_as.default, aten.repeat.default, *_ops("broadcast_to.default"))
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
        if g.size[a] != g.size[b] and g.size[b] > 0:
            g.slices[b] = a
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
    _indexed_by_int(g, src, di[axis], "indexed by a Python integer (W[i])")
    g.derive(node, src, keep)


def _indexed_by_int(g: DimGraph, src, d: int, why: str) -> None:
    """A weight indexed by a Python integer is a stack of fixed count (experts); an activation may be indexed for
    many reasons (a cls token, a shape), so there the axis is only a selection: finite if no layer reads it."""
    if g.is_param_derived(src):
        g.finite(d, why)
    else:
        g.selected.setdefault(d, "indexed by a Python integer (x[..., i])")


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
    if node.target != aten.unbind.int and g.size[di[axis]] > 1 and all(g.size[o[axis]] == 1 for o in outs):
        # split into single elements, each read on its own: an enumerated (fixed) axis, as with unbind
        _indexed_by_int(g, src, di[axis], "split into single elements")
    elif node.target != aten.unbind.int:
        g.sum(di[axis], [o[axis] for o in outs])
    else:
        _indexed_by_int(g, src, di[axis], "unbound into a fixed number of tensors")
    if g.is_param_derived(src):  # a fused parameter split into parts: each part keeps the source's axes
        for j, o in enumerate(outs):
            keep = [k for k in range(len(di)) if k != axis] if node.target == aten.unbind.int else \
                list(range(len(di)))
            g.derive_item(node, j, src, keep)


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
    origins = g.item_origins.get((src.name, idx))
    if origins:
        g.origin[node.name] = origins[0]
        if len(origins) > 1:
            g.more_origins[node.name] = origins[1:]


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
    g.sum(do[axis], sizes)
    _reassembled(g, do[axis], sizes)
    _combine_params(g, node, node.args[0], lambda dp: list(range(len(dp))))


def _reassembled(g: DimGraph, out: int, parts: list[int]) -> None:
    """cat of slices that tile one axis (partial rotary: x[..., :r] rotated, x[..., r:] kept) is that axis again."""
    if len(parts) < 2:
        return
    by_root: dict[int, set[int]] = {}
    for s, src in g.slices.items():  # slices of several tensors can share a root (q and k rotated by one cos)
        by_root.setdefault(g.find(s), set()).add(g.find(src))
    common = set.intersection(*(by_root.get(g.find(p), set()) for p in parts))
    total = sum(g.size[p] for p in parts)
    for src in common:
        if g.size[src] == total:
            g.eq(out, src)


def _combine_params(g: DimGraph, node: fx.Node, parts, axis_map_of) -> None:
    """cat/stack: of parameters only (separate q/k/v weights fused, expert weights stacked), the result is a view
    of each of them; a parameter joined with activations (a cls token concatenated to the tokens) is used like a
    vector."""
    parts = [p for p in parts if isinstance(p, fx.Node)]
    if parts and all(g.is_param_derived(p) for p in parts):
        derived = []
        for p in parts:
            amap = axis_map_of(g.dims(p) or [])
            derived += [(param, [None if a is None else src_map[a] for a in amap]) for param, src_map in g.origins(p)]
        g.origin[node.name] = derived[0]
        g.more_origins[node.name] = derived[1:]
        return
    for p in parts:
        for param, amap in g.origins(p):
            g.uses.setdefault(param, []).append(
                Use("elementwise", node, 0, (), tuple(a for a in amap if a is not None), "data"))


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
    g.finite(do[axis], "stacked from a fixed number of tensors")
    _combine_params(g, node, node.args[0], lambda dp: [i if i < axis else (None if i == axis else i - 1)
                                                        for i in range(len(dp) + 1)])


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
    if node.target in _ARG_REDUCTIONS:
        for a in red:
            g.selected.setdefault(di[a], f"selected along by {str(node.target).split('.')[1]}")
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


_ARG_REDUCTIONS = {aten.argmax.default, aten.argmin.default, aten.max.dim, aten.min.dim}


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
        _stack_axes(g, b, 2, "a batched matmul")
    if g.is_param_derived(a):
        g.use(node, ia, "matmul", (-1,), (-2,))
        _stack_axes(g, a, 2, "a batched matmul")
    if not g.is_param_derived(a) and not g.is_param_derived(b):
        if not _maybe_manual_attention(g, node, a, b):
            da = g.dims(a)
            if da:
                g.act_contractions.append((node, da[-1]))


def _stack_axes(g: DimGraph, w, n_matrix: int, how: str) -> None:
    """Leading axes of a parameter used as a stack of independent matrices (experts): a fixed count."""
    dw = g.dims(w)
    for d in (dw or [])[:-n_matrix]:
        g.finite(d, f"stack axis of a weight used as independent matrices ({how})")


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
    if not any(g.is_param_derived(op) for op in operands):
        for c, d in letter_dims.items():
            if c not in out and sum(c in s for s in specs) > 1:
                g.act_contractions.append((node, d))
    for k, (spec, op) in enumerate(zip(specs, operands)):
        if g.is_param_derived(op):
            others = "".join(s for j, s in enumerate(specs) if j != k)
            fan_in = tuple(i for i, c in enumerate(spec) if c in others and c not in out)
            fan_out = tuple(i for i, c in enumerate(spec) if c in out and c not in others)
            g.use(node, 1, "matmul", fan_in, fan_out, "einsum", arg=op)
            dop = g.dims(op) or []
            for i, c in enumerate(spec):  # in the other operands and in the output: a stack (batch) axis
                if c in others and c in out and i < len(dop):
                    if any(kind == "prod" and g.find(dop[i]) in {g.find(p) for p in parts}
                           for kind, _o, parts in g.relations):
                        # a factor of a regrouped axis (the heads of a (heads, head_dim) view of the width): per-
                        # head matrices, whose count follows the product, not a fixed stack of experts
                        continue
                    g.finite(dop[i], "stack axis of a weight used as independent matrices (einsum batch index)")


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
    # grouped: in_channels = groups * (in/groups); whether the group count or the group width is fixed is decided
    # in the width analysis, from all the grouped convs of the model
    g.eq(do[c_axis], dw[out_ax])
    if batched:
        g.eq(dx[0], do[0])
    for k in range(2, len(dw)):
        g.finite(dw[k], "kernel size")
    if groups > 1 and g.size[dw[in_ax]] == 1:  # depthwise: each output channel filters one input channel
        g.scale(do[c_axis], dx[c_axis])
    for k in range(c_axis + 1, len(dx)):  # output positions are an affine function of the input positions
        if k < len(do):
            g.scale(do[k], dx[k])
    for u in g.use(node, 1, "conv", (in_ax, *range(2, len(dw))), (out_ax,), groups=groups):
        if groups > 1:
            g.grouped_convs.append((u, dw[in_ax], dx[c_axis], groups))
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
        _lookup(g, node, src, (axis,), [None if i == axis else i for i in range(len(di))])


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
            n_out_idx = len(do) - lead - tail  # the index tensors' broadcast axes
            amap = list(range(lead)) + [None] * n_out_idx + list(range(lead + n_idx, len(di)))
            _lookup(g, node, src, tuple(range(lead, lead + n_idx)), amap)


def _lookup(g: DimGraph, node: fx.Node, src, indexed: tuple[int, ...], axis_map: list) -> None:
    """Rows of a parameter read by integer indices.  Rows that are vectors make it an embedding table (fan-in: the
    indexed axes); rows that are matrices make it a stack of weights (experts gathered per token), whose later
    matmul says the fans: the result is a view of the parameter."""
    if _ndim(g, src) - len(indexed) >= 2:
        g.derive(node, src, axis_map)
    else:
        g.use(node, 0, "embedding", indexed, tuple(i for i in range(_ndim(g, src)) if i not in indexed))


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


def found_upstream(node, match: Callable[[fx.Node], bool], through: Callable[[fx.Node], bool] = lambda n: True,
                   depth: int = 4) -> bool:
    """Whether an op ``match``-ing is among ``node``'s producers at most ``depth`` ops back, walking only through
    ops that pass ``through``."""
    frontier = [node]
    for _ in range(depth):
        nxt = []
        for n in frontier:
            if not isinstance(n, fx.Node) or n.op != "call_function":
                continue
            if match(n):
                return True
            if through(n):
                nxt.extend(a for a in n.args if isinstance(a, fx.Node))
        frontier = nxt
    return False


def _from_softmax(node, depth: int = 4) -> bool:
    return found_upstream(node, lambda n: n.target in _SOFTMAX,
                          lambda n: n.target in _PASS_THROUGH or _is_pointwise(n.target), depth)


def _maybe_manual_attention(g: DimGraph, node: fx.Node, a, b) -> bool:
    da, db = g.dims(a), g.dims(b)
    if da is None or db is None or len(da) < 3:
        return False
    if _reaches_softmax(node):
        g.attention.append(AttentionSite(node, "manual", da[-1], da[-3] if len(da) >= 3 else None))
    elif _from_softmax(a) and len(db) >= 3:
        g.attention.append(AttentionSite(node, "manual-v", db[-1], db[-3] if len(db) >= 3 else None))
    else:
        return False
    return True


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
    adaptive = "adaptive" in str(node.target)
    for i in range(max(0, len(dx) - n_sp), min(len(dx), len(do))):
        if adaptive:
            g.finite(do[i], "output size of an adaptive pooling")
        else:
            g.scale(do[i], dx[i])


# ---------------------------------------------------------------------------------------------------------------------
# Selection, counting and integer indexing: the axes they act on hold a fixed set of alternatives (experts, classes,
# positions), never features


def _axis(node: fx.Node, pos: int, name: str, default=-1):
    return node.args[pos] if len(node.args) > pos else node.kwargs.get(name, default)


@rule(*_ops("topk.default", "sort.default", "sort.stable", "kthvalue.default", "mode.default"))
def _topk(g: DimGraph, node: fx.Node) -> None:
    src, outs = node.args[0], g.node_dims.get(node.name)
    di = g.dims(src)
    if di is None or not outs:
        return
    if node.target in _ops("topk.default"):
        axis = _norm_axis(_axis(node, 2, "dim"), len(di))
    elif node.target in _ops("sort.stable"):
        axis = _norm_axis(node.kwargs.get("dim", _axis(node, 2, "dim")), len(di))
    else:
        axis = _norm_axis(_axis(node, 1, "dim"), len(di))
    for o in outs:
        if isinstance(o, list):
            if len(o) == len(di):
                for i in range(len(di)):
                    if i != axis:
                        g.eq(di[i], o[i])
                if node.target in _ops("topk.default"):
                    g.finite(o[axis], "k of a top-k")
                else:
                    g.eq(di[axis], o[axis])
            else:  # kthvalue/mode: the axis is reduced
                for j, i in enumerate(k for k in range(len(di)) if k != axis):
                    if j < len(o):
                        g.eq(di[i], o[j])
    g.selected.setdefault(di[axis], f"selected along by {_opname(node)}")


@rule(*_ops("argsort.default", "argsort.stable"))
def _argsort(g: DimGraph, node: fx.Node) -> None:
    src, di = node.args[0], g.dims(node.args[0])
    if di is None:
        return
    g.eq_axes(src, node)
    axis = _norm_axis(node.kwargs.get("dim", _axis(node, 1, "dim")) if node.target in _ops("argsort.stable")
                      else _axis(node, 1, "dim"), len(di))
    g.selected.setdefault(di[axis], f"selected along by {_opname(node)}")


@rule(*_ops("histc.default", "bincount.default"))
def _count(g: DimGraph, node: fx.Node) -> None:
    do = g.dims(node)
    if do:
        g.finite(do[0], f"bins of {_opname(node)}")


@rule(*_ops("one_hot.default"))
def _one_hot(g: DimGraph, node: fx.Node) -> None:
    idx, do = node.args[0], g.dims(node)
    di = g.dims(idx)
    if do is None:
        return
    for a, b in zip(di or [], do[:-1]):
        g.eq(a, b)
    g.finite(do[-1], "classes of one_hot")


@rule(*_ops("scatter.src", "scatter.value", "scatter.reduce", "scatter.value_reduce", "scatter_.src",
            "scatter_.value", "scatter_add.default", "scatter_add_.default", "scatter_reduce.two",
            "scatter_reduce_.two", "index_add.default", "index_add_.default", "index_copy.default",
            "index_copy_.default", "index_fill.int_Scalar", "index_fill.int_Tensor", "index_fill_.int_Scalar",
            "index_fill_.int_Tensor", "index_reduce.default", "index_reduce_.default"))
def _scatter(g: DimGraph, node: fx.Node) -> None:
    """Writes into ``self`` at integer positions along ``dim``: that axis is indexed."""
    src = node.args[0]
    di = g.dims(src)
    if di is None:
        return
    g.eq_axes(src, node)
    axis = _norm_axis(_axis(node, 1, "dim", 0), len(di))
    g.finite(di[axis], f"written at integer positions ({_opname(node)})")
    name = str(node.target)
    values = node.args[3] if len(node.args) > 3 and ("scatter" in name or "index_add" in name or
                                                     "index_copy" in name or "index_reduce" in name) else None
    dv = g.dims(values)
    if dv is not None and len(dv) == len(di):
        for i in range(len(di)):
            if i != axis:
                g.eq(dv[i], di[i])
        if "index_" in name:  # index_add/copy: source's dim axis runs along the index
            g.eq(dv[axis], (g.dims(node.args[2]) or [dv[axis]])[0])


@rule(*_ops("index_put.default", "index_put_.default", "_index_put_impl_.default", "_unsafe_index_put.default"))
def _index_put(g: DimGraph, node: fx.Node) -> None:
    src, indices = node.args[0], node.args[1]
    values = node.args[2] if len(node.args) > 2 else None
    di = g.dims(src)
    if di is None:
        return
    g.eq_axes(src, node)
    indexed = [k for k, t in enumerate(indices) if t is not None]
    for k in indexed:
        if k < len(di):
            g.finite(di[k], f"written at integer positions ({_opname(node)})")
    dv = g.dims(values)
    rest = [k for k in range(len(di)) if k not in indexed]
    if dv is not None:  # the values' trailing axes are the non-indexed axes
        for a, b in zip(reversed(dv), reversed([di[k] for k in rest])):
            g.eq(a, b)


@rule(*_ops("gather.default", "take_along_dim.default"))
def _gather(g: DimGraph, node: fx.Node) -> None:
    src, idx = node.args[0], node.args[2] if node.target in _ops("gather.default") else node.args[1]
    di, dx = g.dims(src), g.dims(idx)
    g.eq_axes(idx, node)  # output has the index's shape
    if di is None:
        return
    axis = _norm_axis(_axis(node, 1, "dim", 0) if node.target in _ops("gather.default") else _axis(node, 2, "dim", 0),
                      len(di))
    if dx is not None and len(dx) == len(di):
        for i in range(len(di)):
            if i != axis:
                g.eq(di[i], dx[i])
    g.finite(di[axis], f"indexed by integers ({_opname(node)})")
    if g.is_param_derived(src):
        g.use(node, 0, "embedding", (axis,), tuple(i for i in range(len(di)) if i != axis))


@rule(*_ops("repeat_interleave.self_int", "repeat_interleave.self_Tensor"))
def _repeat_interleave(g: DimGraph, node: fx.Node) -> None:
    src, di, do = node.args[0], g.dims(node.args[0]), g.dims(node)
    dim = _axis(node, 2, "dim", None)
    if di is None or do is None:
        return
    if dim is None:  # flattened
        g.prod([do[0]], di)
        return
    axis = _norm_axis(dim, len(di))
    for i in range(len(di)):
        if i == axis:
            g.scale(do[i], di[i])
        else:
            g.eq(di[i], do[i])


@rule(*_ops("nonzero.default", "argwhere.default", "masked_select.default", "unique_consecutive.default",
            "_unique2.default", "unique_dim.default", "item.default", "_local_scalar_dense.default",
            "nonzero_static.default", "masked_scatter.default", "masked_scatter_.default"))
def _data_dependent(g: DimGraph, node: fx.Node) -> None:
    """Outputs sized by the data: they carry no width."""
    if node.target in _ops("masked_scatter.default", "masked_scatter_.default"):
        g.eq_axes(node.args[0], node)


# ---------------------------------------------------------------------------------------------------------------------
# Weight stacks, recurrent layers, reparametrised weights


def _grouped_mm(g: DimGraph, node: fx.Node) -> None:
    """``out[s] = x[s] @ w[e(s)]``: (S, K) x (E, K, N) -> (S, N), rows grouped by expert through ``offs``."""
    x, w = node.args[0], node.args[1]
    offs = node.args[2] if len(node.args) > 2 else node.kwargs.get("offs")
    dx, dw, do = g.dims(x), g.dims(w), g.dims(node)
    if dx is None or dw is None or do is None:
        return
    if len(dw) == 3 and len(dx) == 2:
        g.eq(dx[-1], dw[1])
        g.eq(do[-1], dw[2])
        g.eq(dx[0], do[0])
        doffs = g.dims(offs)
        if doffs:
            g.eq(doffs[0], dw[0])
        g.use(node, 1, "matmul", (1,), (2,), "grouped_mm")
        _stack_axes(g, w, 2, "grouped matmul")
    else:  # 2-D x 2-D / 3-D x 3-D grouped forms: an ordinary (batched) matmul per group
        _matmul_dims(g, node, x, w, node)
        _record_matmul(g, node, 0, 1)


for _target in _ops("_grouped_mm.default"):
    RULES[_target] = _grouped_mm
# transformers' CPU/compile fallback custom op (torch.ops.transformers.grouped_mm_fallback), matched by name
RULES["transformers.grouped_mm_fallback.default"] = _grouped_mm

_RNN_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


@rule(*_ops("lstm.input", "gru.input", "rnn_tanh.input", "rnn_relu.input"))
def _rnn(g: DimGraph, node: fx.Node) -> None:
    """``aten.lstm/gru/rnn_*(input, hx, params, has_biases, num_layers, dropout, train, bidirectional,
    batch_first)``: per layer and direction (w_ih (G*H, in), w_hh (G*H, H)[, b_ih, b_hh][, w_hr (H, P)])."""
    x, params = node.args[0], node.args[2]
    has_bias, layers, bidir = bool(node.args[3]), int(node.args[4]), bool(node.args[7])
    gates = _RNN_GATES[str(node.target).split(".")[1]]
    dirs = 2 if bidir else 1
    per = len(params) // max(1, layers * dirs)
    outs = g.node_dims.get(node.name)
    dx = g.dims(x)
    if not outs or dx is None or per not in (2, 3, 4, 5):
        return
    out, h_n = outs[0], outs[1]
    for a, b in zip(dx[:-1], out[:-1]):
        g.eq(a, b)
    h = h_n[-1]  # hidden (or projection) size
    if bidir:
        g.scale(out[-1], h)
    else:
        g.eq(out[-1], h)
    hx = node.args[1]
    for t in hx if isinstance(hx, (list, tuple)) else [hx]:
        dt = g.dims(t)
        if dt is not None:
            for a, b in zip(dt, h_n):
                g.eq(a, b)
    for k in range(layers * dirs):
        layer = k // dirs
        group = params[k * per:(k + 1) * per]
        w_ih, w_hh = group[0], group[1]
        dih, dhh = g.dims(w_ih), g.dims(w_hh)
        if dih is None or dhh is None:
            continue
        g.eq(dih[1], dx[-1] if layer == 0 else out[-1])
        g.eq(dih[0], dhh[0])
        g.eq(dhh[1], h)
        hidden = h
        if per in (3, 5):  # LSTM proj_size: w_hr (P, H) maps the cell state (H) to the output (P)
            w_hr = group[-1]
            dhr = g.dims(w_hr)
            if dhr is not None:
                g.eq(dhr[0], h)
                hidden = dhr[1]
                g.use(node, 2, "matmul", (1,), (0,), "rnn projection", arg=w_hr)
        g.scale(dih[0], hidden)  # gates * hidden
        for p in (w_ih, w_hh):
            g.use(node, 2, "matmul", (1,), (0,), "rnn", arg=p)
        if has_bias and per >= 4:
            for b in group[2:4]:
                db = g.dims(b)
                if db is not None:
                    g.eq(db[0], dih[0])
                    g.use(node, 2, "elementwise", (), (0,), "rnn bias", arg=b)


@rule(*_ops("_weight_norm.default"))
def _weight_norm(g: DimGraph, node: fx.Node) -> None:
    """``w = g * v / ||v||`` (norm over every axis but ``dim``): later uses of w are uses of the direction v; the
    magnitude g scales each slice of w, elementwise."""
    v, mag = node.args[0], node.args[1]
    dv, dg = g.dims(v), g.dims(mag)
    g.eq_axes(v, node)
    if dg is not None and dv is not None and len(dg) == len(dv):
        for a, b in zip(dg, dv):
            g.eq(a, b)
        g.use(node, 1, "elementwise", (), tuple(i for i, d in enumerate(dg) if g.size[d] > 1), "weight_norm")
    g.derive(node, v, list(range(_ndim(g, v))))


def _opname(node: fx.Node) -> str:
    return str(node.target).replace("aten.", "").split(".")[0]


# ---------------------------------------------------------------------------------------------------------------------
# Factories: new tensors whose dims are constrained only by later use.


def _created(g: DimGraph, node: fx.Node) -> None:
    """Record the axes of a tensor the forward creates (``arange(16)`` for sinusoidal features, a literal table):
    the width analysis fixes those no layer produces, as it fixes the model's inputs."""
    if node.target != aten.sym_size.int:
        dims = g.node_dims.get(node.name)
        if dims and isinstance(dims[0], int):
            g.created.update(d for d in dims if g.size[d] > 1)


for _factory in (aten.arange.default, aten.arange.start, aten.arange.start_step, aten.ones.default, aten.zeros.default,
            aten.full.default, aten.empty.memory_format, aten.new_ones.default, aten.new_zeros.default,
            aten.new_full.default, aten.new_empty.default, aten.scalar_tensor.default, aten.randn.default,
            aten.rand.default, aten.eye.default, aten.lift_fresh_copy.default, aten.sym_size.int):
    RULES.setdefault(_factory, _created)

VIEW_LIKE = {aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.flatten.using_ints,
             aten.unflatten.int, aten.squeeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.unsqueeze.default,
             aten.permute.default, aten.transpose.int, aten.t.default, aten.expand.default, aten.contiguous.default,
             aten.clone.default, aten.alias.default, aten.detach.default, aten.to.dtype, aten.to.dtype_layout,
             aten._to_copy.default, aten.type_as.default, aten.dropout.default}


def _rule_for(target):
    fn = RULES.get(target) or RULES.get(str(target))
    if fn is None and isinstance(target, torch._ops.OpOverload):
        packet = target.overloadpacket.__name__
        if packet.endswith("_") and not packet.endswith("__"):  # in-place: the out-of-place op's rule
            functional = getattr(getattr(aten, packet[:-1], None), target._overloadname, None)
            if functional is not None:
                fn = RULES.get(functional) or (pointwise if _is_pointwise(functional) else None)
    return fn


def apply_rule(g: DimGraph, node: fx.Node, recurse: Callable[[fx.Node], None]) -> None:
    fn = _rule_for(node.target)
    if fn is not None:
        before = {p: len(us) for p, us in g.uses.items()}
        fn(g, node)
        if fn is not _no_op:
            _data_uses(g, node, before)
    elif _is_pointwise(node.target):
        pointwise(g, node)
    elif node.target is not None and "wrap_with" in str(node.target) or (
        isinstance(node.target, torch._ops.HigherOrderOperator)):
        recurse(node)
    else:
        key = str(node.target)
        g.unknown_ops[key] = g.unknown_ops.get(key, 0) + 1
        for i, a in enumerate(node.args):
            for param, _ in g.origins(a):
                g.uses.setdefault(param, []).append(Use("unknown", node, i, (), ()))


def _data_uses(g: DimGraph, node: fx.Node, before: dict[str, int]) -> None:
    """A parameter the rule neither used nor viewed is an operand fed as data (a learned table through a norm, a
    learned query into a projection): record it as used elementwise, every axis a feature axis."""
    derived = {p for p, _ in g.origins(node)}
    derived |= {p for (name, _), orgs in g.item_origins.items() if name == node.name for p, _ in orgs}
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
