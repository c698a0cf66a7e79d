"""Op rules: reductions, losses, pooling, and the ops that select or count along an axis (topk, sort, argmax,
histc): the axes they act on hold a fixed set of alternatives (classes, positions), never features."""
from __future__ import annotations

import torch

from .call import OUTS, Call
from .graph import DimGraph, SelectionKind, _norm_axis, _opname, _ops
from .table import is_arg_reduction, rule

aten = torch.ops.aten


@rule("argmax", "argmin", "max.dim", "min.dim", arg_reduction=True, needs=("input", OUTS))
@rule("sum.dim_IntList", "mean.dim", sum_reduction=True, needs=("input", OUTS))
@rule("amax", "amin", "var.correction", "std.correction", "var.dim", "std.dim",
      "linalg_vector_norm", "norm.ScalarOpt_dim", "logsumexp", "any.dim", "all.dim", "prod.dim_int",
      needs=("input", OUTS))
def _reduce(g: DimGraph, call: Call) -> None:
    node, di, outs = call.node, call.dims("input"), call.outs
    dims_arg = call.get("dim")
    if dims_arg is None:
        return
    if isinstance(dims_arg, int):
        dims_arg = [dims_arg]
    red = {_norm_axis(a, len(di)) for a in dims_arg}
    keep = [i for i in range(len(di)) if i not in red]
    if is_arg_reduction(node.target):
        for a in red:
            g.select(di[a], SelectionKind.RANKED, f"selected along by {str(node.target).split('.')[1]}")
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


@rule("cross_entropy_loss", "nll_loss", "nll_loss_nd", "nll_loss_forward", "nll_loss2d_forward", needs=("input",))
def _nll(g: DimGraph, call: Call) -> None:
    dx, dt = call.dims("input"), call.dims("target")
    c_axis = 1 if len(dx) > 1 else 0
    g.finite(dx[c_axis], "class dim indexed by the loss target")
    if g.size[dx[c_axis]] != 1:
        g.loss_dims.add(dx[c_axis])
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
      aten.pad.default, aten.constant_pad_nd.default, needs=("input", OUTS))
def _pool(g: DimGraph, call: Call) -> None:
    node, dx, outs = call.node, call.dims("input"), call.outs
    do = outs if isinstance(outs[0], int) else outs[0]
    spatial = 1 if node.target not in (aten.pad.default, aten.constant_pad_nd.default) else len(call.arg("pad")) // 2
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


@rule("topk", "sort", "sort.stable", "kthvalue", "mode", needs=("input", OUTS))
def _topk(g: DimGraph, call: Call) -> None:
    node, di, outs = call.node, call.dims("input"), call.outs
    axis = _norm_axis(call.get("dim", -1), len(di))
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
    g.select(di[axis], SelectionKind.RANKED, f"selected along by {_opname(node)}")


@rule("argsort", "argsort.stable", needs=("input",))
def _argsort(g: DimGraph, call: Call) -> None:
    node, src = call.node, call.arg("input")
    di = call.dims(src)
    g.eq_axes(src, node)
    axis = _norm_axis(call.get("dim", -1), len(di))
    g.select(di[axis], SelectionKind.RANKED, f"selected along by {_opname(node)}")


@rule("histc", "bincount")
def _count(g: DimGraph, call: Call) -> None:
    do = call.out
    if do:
        g.finite(do[0], f"bins of {_opname(call.node)}")
