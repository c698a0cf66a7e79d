"""Op rules: integer indexing (embedding lookups, gather, scatter, index_put, one_hot) and data-dependent ops: an
axis indexed, written or counted by integers holds a fixed set of alternatives, never features."""
from __future__ import annotations

import torch
import torch.fx as fx

from .graph import DimGraph, _axis, _ndim, _norm_axis, _opname, _ops
from .table import Layer, rule

aten = torch.ops.aten


@rule("embedding", layer=Layer(weight=0, bias=None, input=None, out_axis=1))
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


@rule("index_select")
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


@rule("index.Tensor")
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


@rule("one_hot")
def _one_hot(g: DimGraph, node: fx.Node) -> None:
    idx, do = node.args[0], g.dims(node)
    di = g.dims(idx)
    if do is None:
        return
    for a, b in zip(di or [], do[:-1]):
        g.eq(a, b)
    g.finite(do[-1], "classes of one_hot")


@rule("scatter.src", "scatter.value", "scatter.reduce", "scatter.value_reduce", "scatter_.src", "scatter_.value",
      "scatter_add", "scatter_add_", "scatter_reduce.two", "scatter_reduce_.two", "index_add", "index_add_",
      "index_copy", "index_copy_", "index_fill.int_Scalar", "index_fill.int_Tensor", "index_fill_.int_Scalar",
      "index_fill_.int_Tensor", "index_reduce", "index_reduce_")
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


@rule("index_put", "index_put_", "_index_put_impl_", "_unsafe_index_put")
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


@rule("gather", "take_along_dim")
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


@rule("repeat_interleave.self_int", "repeat_interleave.self_Tensor")
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


@rule("nonzero", "argwhere", "masked_select", "unique_consecutive", "_unique2", "unique_dim", "item",
      "_local_scalar_dense", "nonzero_static", "masked_scatter", "masked_scatter_")
def _data_dependent(g: DimGraph, node: fx.Node) -> None:
    """Outputs sized by the data: they carry no width."""
    if node.target in _ops("masked_scatter.default", "masked_scatter_.default"):
        g.eq_axes(node.args[0], node)
