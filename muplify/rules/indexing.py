"""Op rules: integer indexing (embedding lookups, gather, scatter, index_put, one_hot) and data-dependent ops: an
axis indexed, written or counted by integers holds a fixed set of alternatives, never features."""
from __future__ import annotations

import torch
import torch.fx as fx

from .call import OUT, OUTS, Call
from .graph import DimGraph, _ndim, _norm_axis, _opname, _ops
from .table import Layer, rule

aten = torch.ops.aten


@rule("embedding", layer=Layer(weight=0, bias=None, input=None, out_axis=1), needs=("weight", OUT))
def _embedding(g: DimGraph, call: Call) -> None:
    node = call.node
    dw, di, do = call.dims("weight"), call.dims("indices"), call.out
    g.eq(dw[-1], do[-1])
    for a, b in zip(di or [], do[:-1]):
        g.eq(a, b)
    g.finite(dw[0], "indexed by integer inputs (vocabulary / positions)")
    g.use(node, 0, "embedding", (0,), (1,))


@rule(aten.embedding_bag, aten._embedding_bag, needs=("weight", OUTS))
def _embedding_bag(g: DimGraph, call: Call) -> None:
    """``nn.EmbeddingBag``: the rows of the table are indexed (fixed), its columns are the output's features; the
    output's bags line up with the offsets."""
    node, outs = call.node, call.outs
    dw = call.dims("weight")
    out = outs[0] if outs and isinstance(outs[0], list) else None
    if out is None or len(dw) != 2:
        return
    g.eq(dw[1], out[-1])
    do = call.dims("offsets")
    if do and len(out) == 2:
        g.eq(do[0], out[0])  # eq ignores a size mismatch (include_last_offset: one more offset than bags)
    g.finite(dw[0], "indexed by integer inputs (the rows of an embedding bag)")
    g.use(node, 0, "embedding", (0,), (1,))


@rule("index_select", needs=("input", OUT))
def _index_select(g: DimGraph, call: Call) -> None:
    node, src = call.node, call.arg("input")
    di, do = call.dims(src), call.out
    axis = _norm_axis(call.arg("dim"), len(di))
    for i in range(len(di)):
        if i != axis:
            g.eq(di[i], do[i])
    g.finite(di[axis], "indexed by integer inputs")
    if g.is_param_derived(src):
        _lookup(g, node, src, (axis,), [None if i == axis else i for i in range(len(di))])


@rule("index.Tensor", needs=("input", OUT))
def _index(g: DimGraph, call: Call) -> None:
    node, src, indices = call.node, call.arg("input"), call.arg("indices")
    di, do = call.dims(src), call.out
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


@rule("one_hot", needs=(OUT,))
def _one_hot(g: DimGraph, call: Call) -> None:
    di, do = call.dims("input"), call.out
    for a, b in zip(di or [], do[:-1]):
        g.eq(a, b)
    g.finite(do[-1], "classes of one_hot")


@rule("scatter.src", "scatter.value", "scatter.reduce", "scatter.value_reduce", "scatter_.src", "scatter_.value",
      "scatter_add", "scatter_add_", "scatter_reduce.two", "scatter_reduce_.two", "index_add", "index_add_",
      "index_copy", "index_copy_", "index_fill.int_Scalar", "index_fill.int_Tensor", "index_fill_.int_Scalar",
      "index_fill_.int_Tensor", "index_reduce", "index_reduce_", needs=("input",))
def _scatter(g: DimGraph, call: Call) -> None:
    """Writes into ``self`` at integer positions along ``dim``: that axis is indexed."""
    node, src = call.node, call.arg("input")
    di = call.dims(src)
    g.eq_axes(src, node)
    axis = _norm_axis(call.get("dim", 0), len(di))
    g.finite(di[axis], f"written at integer positions ({_opname(node)})")
    name = str(node.target)
    # the values written (src / source; index_fill writes a scalar)
    values = call.at(3) if "scatter" in name or "index_add" in name or "index_copy" in name or "index_reduce" in name \
        else None
    dv = g.dims(values)
    if dv is not None and len(dv) == len(di):
        for i in range(len(di)):
            if i != axis:
                g.eq(dv[i], di[i])
        if "index_" in name:  # index_add/copy: source's dim axis runs along the index
            g.eq(dv[axis], (call.dims("index") or [dv[axis]])[0])


@rule("index_put", "index_put_", "_index_put_impl_", "_unsafe_index_put", needs=("input",))
def _index_put(g: DimGraph, call: Call) -> None:
    node, src, indices, values = call.node, call.arg("input"), call.arg("indices"), call.arg("values")
    di = call.dims(src)
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
def _gather(g: DimGraph, call: Call) -> None:
    node, src = call.node, call.arg("input")
    idx = call.arg("index") if node.target in _ops("gather.default") else call.arg("indices")
    di, dx = g.dims(src), g.dims(idx)
    g.eq_axes(idx, node)  # output has the index's shape
    if di is None:
        return
    axis = _norm_axis(call.get("dim", 0), len(di))
    if dx is not None and len(dx) == len(di):
        for i in range(len(di)):
            if i != axis:
                g.eq(di[i], dx[i])
    g.finite(di[axis], f"indexed by integers ({_opname(node)})")
    if g.is_param_derived(src):
        g.use(node, 0, "embedding", (axis,), tuple(i for i in range(len(di)) if i != axis))


@rule("repeat_interleave.self_int", "repeat_interleave.self_Tensor", needs=("input", OUT))
def _repeat_interleave(g: DimGraph, call: Call) -> None:
    di, do, dim = call.dims("input"), call.out, call.get("dim")
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
def _data_dependent(g: DimGraph, call: Call) -> None:
    """Outputs sized by the data: they carry no width."""
    if call.target in _ops("masked_scatter.default", "masked_scatter_.default"):
        g.eq_axes(call.arg("input"), call.node)
