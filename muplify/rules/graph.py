"""The dim graph: union-find over every tensor axis of the captured graph, plus the relations the op rules add.

Every tensor axis is a *dim*.  A rule says, for one op, which dims are equal (``eq``), which are products or sums of
others (``prod``/``sum``, from reshape, cat, split) or fixed multiples (``scale``: an RNN's gate axis, a conv's output
positions), which are finite by construction (``finite``: kernel sizes, axes indexed, counted or written by integers,
the stack axis of a weight used as independent matrices), which are merely *selected* along (``selected``:
topk/sort/argmax; finite only if no layer reads them), and how a parameter operand is *used* (``use``: which axes are
contracted = fan_in, which survive into the output = fan_out).  Dims are keyed by the fx node.
"""
from __future__ import annotations

from enum import Enum
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.fx as fx

__all__ = ["DimGraph", "Use", "AttentionSite", "CONTRACTING_KINDS"]

CONTRACTING_KINDS = ("matmul", "conv", "embedding")  # use kinds that contract a parameter axis with an activation


class SelectionKind(Enum):
    """How an op picks along an axis."""

    RANKED = "ranked"  # top-k / sort / argmax: a choice among the axis's entries (an expert choice when a router's)
    INDEXED = "indexed"  # a Python integer index (x[..., i]): a cls token, a shape, one gate of a soft router


@dataclass(frozen=True)
class Selection:
    kind: SelectionKind
    why: str  # what selects along the axis, for the plan's reasons ("selected along by topk")

    def __str__(self) -> str:
        return self.why


@dataclass(frozen=True)
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
    node_dims: dict[fx.Node, list] = field(default_factory=dict)  # node -> [dim ids] (or list of lists for tuples)
    relations: list[tuple[str, int, tuple[int, ...]]] = field(default_factory=list)  # (kind, out, parts)
    finite_reasons: dict[int, str] = field(default_factory=dict)
    # node -> (param placeholder name, axis map: node axis -> param axis or None)
    origin: dict[fx.Node, tuple[str, list]] = field(default_factory=dict)
    uses: dict[str, list[Use]] = field(default_factory=dict)  # param placeholder -> uses
    attention: list[AttentionSite] = field(default_factory=list)
    unknown_ops: dict[str, int] = field(default_factory=dict)
    # dims an op selects along (topk, sort, argmax): finite when nothing downstream reads them as features
    selected: dict[int, Selection] = field(default_factory=dict)
    # node -> further (param, axis map) pairs, for a tensor stacked/concatenated from several parameters
    more_origins: dict[fx.Node, list] = field(default_factory=dict)
    # grouped convs: (use, per-group input-channel dim, input-channel dim of the activation, groups)
    grouped_convs: list = field(default_factory=list)
    item_origins: dict[tuple[fx.Node, int], list] = field(default_factory=dict)  # (tuple node, index) -> origins
    slices: dict[int, int] = field(default_factory=dict)  # dim of a slice's output -> the sliced dim
    # (node, dim) contracted between two activations outside attention (an SSM state, a contrastive embedding)
    act_contractions: list = field(default_factory=list)
    loss_dims: set[int] = field(default_factory=set)  # class dims a loss indexes by its target
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
        self.node_dims[node] = self._alloc_val(val)

    def _alloc_val(self, val):
        if isinstance(val, torch.Tensor):
            return [self.new_dim(_int(s)) for s in val.shape]
        if isinstance(val, (tuple, list)):
            return [self._alloc_val(v) for v in val]
        return None

    def dims(self, node) -> list[int] | None:
        if not isinstance(node, fx.Node):
            return None
        d = self.node_dims.get(node)
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

    def unify_factorizations(self) -> None:
        """Two row-major factorizations of one dim into factors of the same sizes, in the same order, are one split:
        their factors are unified pairwise.  A view that merges (batch, heads) and a later view that splits the merged
        dim again (torch's MultiheadAttention: ``(L, B*H, hd)`` then ``(B, H, L, hd)``) otherwise leaves the first
        batch factor unrelated to the batch the attention op ties to the keys'.  Repeated until nothing changes."""
        changed = True
        while changed:
            changed = False
            seen: dict[tuple[int, tuple[int, ...]], tuple[int, ...]] = {}
            for kind, out, parts in self.relations:
                if kind != "prod":
                    continue
                first = seen.setdefault((self.find(out), tuple(self.size[p] for p in parts)), parts)
                for a, b in zip(first, parts):
                    if self.find(a) != self.find(b):
                        self.eq(a, b)
                        changed |= self.find(a) == self.find(b)

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

    def select(self, d: int, kind: SelectionKind, why: str) -> None:
        """Dim ``d`` is selected along (the first op to do so names it)."""
        self.selected.setdefault(d, Selection(kind, why))

    def finite(self, d: int, reason: str) -> None:
        if self.size[d] != 1:
            self.finite_reasons.setdefault(d, reason)

    # -- parameter uses -------------------------------------------------------------------------------------------
    def replace_use(self, old: Use, new: Use) -> None:
        """Put ``new`` where ``old`` is among its parameter's uses (a later stage's reading of a use, as a new record:
        the records the rules made are not edited).  Nothing happens when ``old`` was already replaced."""
        for uses in self.uses.values():
            for i, u in enumerate(uses):
                if u is old:
                    uses[i] = new
                    return

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
        if not isinstance(x, fx.Node) or x not in self.origin:
            return []
        return [self.origin[x], *self.more_origins.get(x, [])]

    def derive(self, node: fx.Node, src, axis_map: list) -> None:
        """``node`` is a view/cast of parameter-derived ``src``; ``axis_map[i]`` is the src axis of node axis i."""
        derived = [(param, [None if a is None or a >= len(src_map) else src_map[a] for a in axis_map])
                   for param, src_map in self.origins(src)]
        if derived:
            self.origin[node] = derived[0]
            if len(derived) > 1:
                self.more_origins[node] = derived[1:]

    def derive_item(self, node: fx.Node, index: int, src, axis_map: list) -> None:
        """Item ``index`` of tuple-valued ``node`` (split, chunk, unbind) is a view of parameter-derived ``src``."""
        for param, src_map in self.origins(src):
            self.item_origins.setdefault((node, index), []).append(
                (param, [None if a is None else src_map[a] for a in axis_map]))

    def is_param_derived(self, x) -> bool:
        return isinstance(x, fx.Node) and x in self.origin


def _int(s) -> int:
    try:
        return int(s)
    except Exception:  # noqa: BLE001 - unbacked symbolic sizes: treat as an unknown size
        return -1


def _ndim(g: DimGraph, x) -> int:
    d = g.dims(x)
    return len(d) if d is not None else 0


def _norm_axis(a: int, n: int) -> int:
    return a % n if n else 0


def _opname(node: fx.Node) -> str:
    return str(node.target).replace("aten.", "").split(".")[0]


def _aten_op(name: str):
    """``aten.<packet>.<overload>`` if this torch has it (for comparisons inside rules)."""
    packet, _, overload = name.partition(".")
    return getattr(getattr(torch.ops.aten, packet, None), overload or "default", None)


def _ops(*names: str) -> list:
    return [op for op in map(_aten_op, names) if op is not None]
