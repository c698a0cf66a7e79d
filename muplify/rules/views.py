"""Op rules: views and regroupings (reshape, permute, expand, slice, select, split, cat, stack)."""
from __future__ import annotations

import operator
from typing import Sequence

import torch
import torch.fx as fx

from .call import OUT, OUTS, Call
from .graph import DimGraph, SelectionKind, Use, _ndim, _norm_axis, _ops
from .table import rule

aten = torch.ops.aten


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


@rule("view", "reshape", view_like=True, softmax_path=True, needs=("input", OUT))
@rule("_unsafe_view", "flatten.using_ints", "unflatten.int", "squeeze", "squeeze.dim", "squeeze.dims", "unsqueeze",
      view_like=True, needs=("input", OUT))
@rule("view.dtype", needs=("input", OUT))
def _reshape(g: DimGraph, call: Call) -> None:
    node, src = call.node, call.arg("input")
    di, do = call.dims(src), call.out
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


@rule("permute", "transpose.int", view_like=True, softmax_path=True)
@rule("t", view_like=True)
@rule("swapaxes", "swapdims", "numpy_T", "mT", "mH", "adjoint", "movedim.int", "movedim.intlist")
def _permute(g: DimGraph, call: Call) -> None:
    """Transposes of every spelling (``W.T``, ``W.mT``, ``W.t()``, ``permute``, ``movedim``): a view with its axes
    permuted, so a parameter used as ``h @ W.T`` keeps its fans."""
    node, src = call.node, call.arg("input")
    n = _ndim(g, src)
    if node.target == aten.permute.default:
        perm = [_norm_axis(p, n) for p in call.arg("dims")]
    elif node.target in _REVERSE_ALL:
        perm = list(range(n))[::-1]
    elif "movedim" in str(node.target):
        s, d = call.arg("source"), call.arg("destination")
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
                a, b = (0, 1) if node.target == aten.t.default else (call.at(1), call.at(2))
            a, b = _norm_axis(a, n), _norm_axis(b, n)
            perm[a], perm[b] = perm[b], perm[a]
    g.eq_axes(src, node, [(p, i) for i, p in enumerate(perm)])
    g.derive(node, src, perm)


@rule("expand", view_like=True, softmax_path=True, needs=("input", OUT))
@rule("expand_as", "repeat", "broadcast_to", needs=("input", OUT))
def _expand(g: DimGraph, call: Call) -> None:
    node, src = call.node, call.arg("input")
    di, do = call.dims(src), call.out
    off = len(do) - len(di)
    axis_map: list = [None] * len(do)
    for i, d in enumerate(di):
        if node.target == aten.repeat.default and g.size[d] != g.size[do[off + i]]:
            continue
        g.eq(d, do[off + i])
        axis_map[off + i] = i
    g.derive(node, src, axis_map)


@rule("slice.Tensor", selection=True, linear_combination=True, needs=("input", OUT))
@rule("narrow", selection=True, needs=("input", OUT))
def _slice(g: DimGraph, call: Call) -> None:
    node, src = call.node, call.arg("input")
    di, do = call.dims(src), call.out
    for i, (a, b) in enumerate(zip(di, do)):
        g.eq(a, b)  # only unifies axes the slice leaves whole (eq ignores different sizes)
        if g.size[a] != g.size[b] and g.size[b] > 0:
            g.slices[b] = a
            if g.size[b] == 1 and not g.is_param_derived(src):
                # one element kept as an axis (gates[..., e:e+1], a soft router's gate expert by expert): a selection
                # along the axis, as x[..., e] is (finite if no layer reads the axis)
                g.select(a, SelectionKind.INDEXED, "indexed by a Python integer (x[..., i:i+1])")
    g.derive(node, src, list(range(len(do))))


@rule("select.int", selection=True, needs=("input", OUT))
def _select(g: DimGraph, call: Call) -> None:
    node, src = call.node, call.arg("input")
    di = call.dims(src)
    axis = _norm_axis(call.arg("dim"), len(di))
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
        g.select(d, SelectionKind.INDEXED, "indexed by a Python integer (x[..., i])")


@rule("split.Tensor", "split_with_sizes", "chunk", "unbind.int", selection=True, needs=("input", OUTS))
@rule("split.sizes", needs=("input", OUTS))
def _split(g: DimGraph, call: Call) -> None:
    node, src = call.node, call.arg("input")
    di, outs = call.dims(src), call.outs
    axis = _norm_axis(call.get("dim", 0), len(di))
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


@rule(operator.getitem, selection=True)
def _getitem(g: DimGraph, call: Call) -> None:
    node, (src, idx) = call.node, call.node.args  # operator.getitem has no schema
    outs = g.node_dims.get(src) if isinstance(src, fx.Node) else None
    mine = call.out
    if not outs or mine is None or not isinstance(idx, int) or idx >= len(outs):
        return
    theirs = outs[idx]
    if isinstance(theirs, list) and len(theirs) == len(mine) and all(isinstance(t, int) for t in theirs):
        for a, b in zip(theirs, mine):
            g.eq(a, b)
    origins = g.item_origins.get((src, idx))
    if origins:
        g.origin[node] = origins[0]
        if len(origins) > 1:
            g.more_origins[node] = origins[1:]


@rule("cat", linear_combination=True, needs=(OUT,))
@rule("concat", needs=(OUT,))
def _cat(g: DimGraph, call: Call) -> None:
    node, tensors, do = call.node, call.arg("tensors"), call.out
    axis = _norm_axis(call.get("dim", 0), len(do))
    sizes = []
    for i, p in enumerate(tensors):
        dp = g.dims(p)
        if dp is None or len(dp) != len(do):
            continue
        for k in range(len(do)):
            if k != axis:
                g.eq(dp[k], do[k])
        sizes.append(dp[axis])
    g.sum(do[axis], sizes)
    _reassembled(g, do[axis], sizes)
    _combine_params(g, node, tensors, lambda dp: list(range(len(dp))))


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
        g.origin[node] = derived[0]
        g.more_origins[node] = derived[1:]
        return
    for p in parts:
        for param, amap in g.origins(p):
            g.uses.setdefault(param, []).append(
                Use("elementwise", node, 0, (), tuple(a for a in amap if a is not None), "data"))


@rule("stack", linear_combination=True, needs=(OUT,))  # stack: RoPE's rotate_every_two
def _stack(g: DimGraph, call: Call) -> None:
    node, tensors, do = call.node, call.arg("tensors"), call.out
    axis = _norm_axis(call.arg("dim"), len(do))
    for p in tensors:
        dp = g.dims(p)
        if dp is not None:
            g.eq_axes(p, node, [(i, i if i < axis else i + 1) for i in range(len(dp))])
    g.finite(do[axis], "stacked from a fixed number of tensors")
    _combine_params(g, node, tensors, lambda dp: [i if i < axis else (None if i == axis else i - 1)
                                                        for i in range(len(dp) + 1)])


@rule("view_as_complex", view_like=True, needs=("input", OUT))
def _view_as_complex(g: DimGraph, call: Call) -> None:
    """(..., n, 2) real -> (..., n) complex (Meta's Llama rotary embedding): the pairs axis goes."""
    node, src = call.node, call.arg("input")
    di, do = call.dims(src), call.out
    for a, b in zip(di[:-1], do):
        g.eq(a, b)
    g.derive(node, src, list(range(len(do))))


@rule("view_as_real", view_like=True, needs=("input", OUT))
def _view_as_real(g: DimGraph, call: Call) -> None:
    """(...) complex -> (..., 2) real: a pairs axis of size 2 comes."""
    node, src = call.node, call.arg("input")
    di, do = call.dims(src), call.out
    for a, b in zip(di, do):
        g.eq(a, b)
    g.derive(node, src, list(range(len(di))) + [None])


def _factor_dims(g: DimGraph, r: int, why: str) -> tuple[int, int]:
    rh, rw = g.new_dim(r), g.new_dim(r)
    g.finite(rh, why)
    g.finite(rw, why)
    return rh, rw


@rule(torch.ops.aten.pixel_shuffle, torch.ops.aten.pixel_unshuffle, needs=("input", OUT))
def _pixel_shuffle(g: DimGraph, call: Call) -> None:
    """``pixel_shuffle``: (*, C·r², H, W) -> (*, C, H·r, W·r) (sub-pixel upsampling); ``pixel_unshuffle`` the
    inverse (space to depth): the channels on the C·r² side are C times the fixed factor r²."""
    di, do = call.dims("input"), call.out
    up = call.node.target.overloadpacket is torch.ops.aten.pixel_shuffle
    r = int(call.arg("upscale_factor" if up else "downscale_factor"))
    for a, b in zip(di[:-3], do[:-3]):
        g.eq(a, b)
    rh, rw = _factor_dims(g, r, f"{'up' if up else 'down'}scale factor of {call.node.target.overloadpacket.__name__}")
    merged, split = (di, do) if up else (do, di)  # merged: (C·r², H, W); split: (C, H·r, W·r)
    g.prod([merged[-3]], [split[-3], rh, rw])
    g.prod([split[-2]], [merged[-2], rh])
    g.prod([split[-1]], [merged[-1], rw])


@rule(torch.ops.aten.im2col, torch.ops.aten.col2im, needs=("input", OUT))
def _im2col(g: DimGraph, call: Call) -> None:
    """``F.unfold`` (im2col): (N, C, H, W) -> (N, C·kh·kw, L), every patch's C channels times the fixed kernel, L
    patches (positions); ``F.fold`` (col2im) the inverse."""
    di, do = call.dims("input"), call.out
    unfold = call.node.target.overloadpacket is torch.ops.aten.im2col
    image, cols = (di, do) if unfold else (do, di)
    if len(image) == 4:
        g.eq(image[0], cols[0])
    k = [g.new_dim(int(n)) for n in call.arg("kernel_size")]
    for d in k:
        g.finite(d, f"kernel size of {call.node.target.overloadpacket.__name__}")
    g.prod([cols[-2]], [image[-3], *k])
    g.finite(cols[-1], "patches of im2col / col2im (unfold / fold): positions")
